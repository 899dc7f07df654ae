/* SPDX-License-Identifier: Apache-2.0 */
/*
 * IPv6 extension headers between the fixed header and the upper-layer protocol, shared by the
 * policy programs (bpf/enforce/policy.bpf.c) and the XDP host firewall (bpf/enforce/xdp_fw.bpf.c).
 *
 * Without this walk, a packet with a hop-by-hop header (every MLD report, jumbograms, router
 * alert) or a fragment header (any datagram larger than the MTU) would be matched by the
 * extension's number instead of its protocol and ports: TCP/UDP behind one would miss its
 * port rules and MLD would not be recognised as link plumbing.
 *
 * Walked: hop-by-hop (0), routing (43), fragment (44), authentication (51) and destination
 * options (60), at most ANDON_IPV6_MAX_EXT of them (Cilium walks 4). ESP (50) hides what
 * follows and is the protocol. Include after vmlinux.h.
 */
#ifndef ANDON_IPV6EXT_H
#define ANDON_IPV6EXT_H

#define ANDON_IPV6_MAX_EXT 6

static __always_inline int andon_ipv6_is_ext(__u8 nh)
{
	return nh == 0 || nh == 43 || nh == 44 || nh == 51 || nh == 60;
}

/* What a fragment header said (zeroed by the caller): later is set for a fragment with a
 * non-zero offset (no upper-layer header in this packet), first for offset 0 with more to
 * follow (the upper-layer header is here, the rest of the datagram in later fragments); id is
 * the datagram's identification, host order. */
struct andon_frag {
	__u32 id;
	__u8 later;
	__u8 first;
};

/* One extension header of type nh from its first 8 bytes (every extension header is at least
 * 8 long): its length in bytes, and the header after it in *nh; a fragment header fills *f. */
static __always_inline __u32 andon_ipv6_ext_step(__u8 *nh, const __u8 h[8], struct andon_frag *f)
{
	__u32 len;

	if (*nh == 44) {
		__u16 off = (h[2] << 8) | h[3];

		len = 8;
		f->id = ((__u32)h[4] << 24) | ((__u32)h[5] << 16) | ((__u32)h[6] << 8) | h[7];
		if (off & 0xfff8)
			f->later = 1;
		else if (off & 1)
			f->first = 1;
	} else if (*nh == 51) {
		len = ((__u32)h[1] + 2) * 4;
	} else {
		len = ((__u32)h[1] + 1) * 8;
	}
	*nh = h[0];
	return len;
}

/* Direct packet access (TC, XDP): l4 points just past the fixed IPv6 header, *nh holds its
 * next-header field. Returns the upper-layer header (or the first header left unwalked, or
 * where a later fragment's payload starts), with its protocol in *nh; NULL when a header runs
 * past the packet's end. */
static __always_inline void *andon_ipv6_skip_ext(void *l4, void *end, __u8 *nh, struct andon_frag *f)
{
#pragma unroll
	for (int i = 0; i < ANDON_IPV6_MAX_EXT; i++) {
		__u8 *h = l4;

		if (!andon_ipv6_is_ext(*nh) || f->later)
			return l4;
		if ((void *)(h + 8) > end)
			return NULL;
		l4 += andon_ipv6_ext_step(nh, h, f);
	}
	return l4;
}

/* The same through bpf_skb_load_bytes (cgroup_skb, which may see a non-linear skb): off is the
 * offset just past the fixed header; returns the offset of the upper-layer header, or -1 when
 * a header cannot be read. */
static __always_inline long andon_ipv6_skip_ext_skb(struct __sk_buff *skb, __u32 off, __u8 *nh,
						    struct andon_frag *f)
{
#pragma unroll
	for (int i = 0; i < ANDON_IPV6_MAX_EXT; i++) {
		__u8 h[8];

		if (!andon_ipv6_is_ext(*nh) || f->later)
			return off;
		if (bpf_skb_load_bytes(skb, off, h, sizeof(h)))
			return -1;
		off += andon_ipv6_ext_step(nh, h, f);
	}
	return off;
}

#endif /* ANDON_IPV6EXT_H */
