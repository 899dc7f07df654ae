/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Label-based network policy at TC, on an endpoint's host-side veth (Cilium's model on
 * one host), and on cgroups of processes on the host network. Four programs share all maps:
 *   tc__from_endpoint  clsact ingress of the host veth: what the endpoint sends (EGRESS)
 *   tc__to_endpoint    clsact egress of the host veth: what it receives     (INGRESS)
 *   cgroup_skb__egress   what sockets of an endpoint cgroup send (EGRESS; a drop makes
 *                        connect()/send() fail with EPERM)
 *   cgroup_skb__ingress  what they receive (INGRESS)
 *
 * Per packet: endpoint config by ifindex (cgroup id) -> conntrack (a hit skips the policy) -> peer
 * identity from the ip LPM -> enforced deny entries, allow entries, default deny, audited deny
 * entries -> verdict, counters, a flow record for what is worth reporting.
 * Maps and wire structs: bpf/abi/netpolicy.h.
 *
 * Audit (per policy) changes only what the audited policy itself would do; an enforced policy's
 * verdict still applies (Cilium's meaning of audit). So the verdict on a new connection is:
 *   1. an enforced deny entry matches                 -> DROPPED  POLICY_DENY (that entry)
 *   2. no allow entry and enforced default deny       -> DROPPED  POLICY_DENIED
 *   3. an audited deny entry matches                  -> AUDIT    POLICY_DENY (passes)
 *   4. an allow entry matches                         -> FORWARDED
 *   5. default deny switched on by audited policies   -> AUDIT    POLICY_DENIED (passes)
 *   6. no policy selects the endpoint this way        -> FORWARDED
 * and the endpoint's own audit mode turns any DROPPED into AUDIT. Audited deny entries have a
 * key space of their own in the deny tries (NP_POL_DIR_AUDIT in the key's direction): one LPM
 * lookup yields one entry, the most specific, and a more specific audited entry in the same
 * space would hide a broader enforced one (step 1 would miss it). Two more lookups per new
 * connection, none for conntrack hits.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "../abi/netpolicy.h"
#include "../include/ipv6ext.h"

char LICENSE[] SEC("license") = "GPL";

#define TC_ACT_OK 0
#define TC_ACT_SHOT 2
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IPPROTO_ICMPV6_ 58

/* conntrack lifetimes (ns), by last-seen */
#define SEC_NS 1000000000ULL
#define CT_TCP_SYN (60 * SEC_NS)          /* a SYN nobody answered */
#define CT_TCP_EST (21600 * SEC_NS)       /* established: six hours, as Cilium */
#define CT_TCP_CLOSE (10 * SEC_NS)        /* after FINs both ways or a RST: let the last ACKs by */
#define CT_UDP (60 * SEC_NS)
#define CT_ICMP (30 * SEC_NS)

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct np_ip_key);
	__type(value, struct np_ip_val);
} np_ipcache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct np_endpoint);
} np_endpoints SEC(".maps");

/* cgroup endpoints: cgroup v2 id -> config; a socket in a descendant cgroup belongs to the
 * deepest endpoint cgroup above it */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, struct np_endpoint);
} np_cgroups SEC(".maps");

/* two generations of the policy: np_gen[0] says which one packets use */
#define POLICY_TRIE(name) \
	struct { \
		__uint(type, BPF_MAP_TYPE_LPM_TRIE); \
		__uint(max_entries, 262144); \
		__uint(map_flags, BPF_F_NO_PREALLOC); \
		__type(key, struct np_pol_key); \
		__type(value, struct np_pol_val); \
	} name SEC(".maps")
POLICY_TRIE(np_allow0);
POLICY_TRIE(np_allow1);
POLICY_TRIE(np_deny0);
POLICY_TRIE(np_deny1);

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} np_gen SEC(".maps");

/* Written by user space after a flip, never read here: an update of a map-in-map makes
 * the bpf(2) call wait for every running BPF program (kernel/bpf/syscall.c
 * maybe_wait_bpf_programs), so afterwards no packet still uses the old generation. */
struct np_sync_inner_t {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} np_sync_inner SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, struct np_sync_inner_t);
} np_sync SEC(".maps") = {
	.values = { &np_sync_inner },
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct np_ct_key);
	__type(value, struct np_ct_val);
} np_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct np_cnt_key);
	__type(value, struct np_cnt_val);
} np_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NP_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} np_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20); /* resized by the loader */
} np_flows SEC(".maps");

/* never written: keeps struct np_flow in the object's BTF (a ring buffer has no value
 * type), so the ABI test can compare it with the Python format */
struct np_flow np_flow_btf __attribute__((used));

/* IP fragments: a datagram's first fragment leaves its ports here, keyed by addresses, protocol
 * and identification, so its later fragments (no L4 header) get the same conntrack entry and the
 * same policy as the first (Cilium's fragment tracking; LRU, its size). Only the BPF side uses it. */
struct np_frag_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__u32 id;
	__u8 proto;
	__u8 family;
	__u16 pad;
};

struct np_frag_val {
	__u16 sport;
	__u16 dport;
	__u16 pol_port;
	__u8 icmp_type;
	__u8 icmp_code;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct np_frag_key);
	__type(value, struct np_frag_val);
} np_frags SEC(".maps");

/* where a packet is enforced: key for conntrack and counters, what flows report */
struct where {
	__u32 key;        /* ifindex, or NP_KEY_CGROUP | low 31 bits of the cgroup id */
	__u32 ifindex;    /* the flow's ifindex: the veth, 0 for a cgroup */
	__u64 cgroup_id;  /* the flow's cgroup_id: 0 for a veth */
};

struct pkt {
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;      /* L4 ports, host order; ICMP echo: the id both ways */
	__u16 dport;
	__u16 pol_port;   /* the port the policy matches: dport, or the ICMP type */
	__u8 family;
	__u8 proto;
	__u8 tcp_flags;
	__u8 icmp_type;
	__u8 icmp_code;
	__u8 fragment;    /* a later fragment: ports from its first fragment (np__frag), if seen */
	__u8 frag_first;  /* the first fragment of a datagram in several */
	__u32 frag_id;    /* the datagram's identification, host order (either kind of fragment) */
};

static __always_inline void np__count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&np_stats, &idx);
	if (v)
		*v += 1;
}

/* Where a packet stands in a datagram of several, from either family's header (the parsers
 * below): 1 for a later fragment, which has no L4 header (np__frag finds its ports). */
static __always_inline int np__fragment(struct pkt *p, __u32 id, int first, int later)
{
	p->frag_id = id;
	p->frag_first = first && !later;
	p->fragment = later != 0;
	return p->fragment;
}

/* Parse Ethernet + IPv4/IPv6 + the first L4 header. 0 ok, 1 not IP, -1 truncated. */
static __always_inline int np__parse(struct __sk_buff *skb, struct pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	void *l4;

	if ((void *)(eth + 1) > end)
		return -1;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end)
			return -1;
		if (ip->ihl < 5)
			return -1;
		p->family = 4;
		p->proto = ip->protocol;
		__builtin_memcpy(p->saddr, &ip->saddr, 4);
		__builtin_memcpy(p->daddr, &ip->daddr, 4);
		/* more fragments (MF) / the fragment offset */
		if (np__fragment(p, bpf_ntohs(ip->id), ip->frag_off & bpf_htons(0x2000), ip->frag_off & bpf_htons(0x1fff)))
			return 0;
		l4 = (void *)ip + ip->ihl * 4;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > end)
			return -1;
		p->family = 6;
		p->proto = ip6->nexthdr;
		__builtin_memcpy(p->saddr, &ip6->saddr, 16);
		__builtin_memcpy(p->daddr, &ip6->daddr, 16);
		struct andon_frag f = {};

		l4 = andon_ipv6_skip_ext(ip6 + 1, end, &p->proto, &f);
		if (!l4)
			return -1;
		if (np__fragment(p, f.id, f.first, f.later))
			return 0;
	} else {
		return 1;
	}

	if (p->proto == IPPROTO_TCP) {
		struct tcphdr *th = l4;
		if ((void *)(th + 1) > end)
			return -1;
		p->sport = bpf_ntohs(th->source);
		p->dport = bpf_ntohs(th->dest);
		p->tcp_flags = ((__u8 *)th)[13];
		p->pol_port = p->dport;
	} else if (p->proto == IPPROTO_UDP) {
		struct udphdr *uh = l4;
		if ((void *)(uh + 1) > end)
			return -1;
		p->sport = bpf_ntohs(uh->source);
		p->dport = bpf_ntohs(uh->dest);
		p->pol_port = p->dport;
	} else if (p->proto == IPPROTO_ICMP || p->proto == IPPROTO_ICMPV6_) {
		__u8 *ih = l4;
		if ((void *)(ih + 8) > end)
			return -1;
		p->icmp_type = ih[0];
		p->icmp_code = ih[1];
		p->pol_port = NP_POL_ICMP_TYPE(ih[0]); /* type 0 is echo reply, not "any" */
		/* echo request/reply (v4 8/0, v6 128/129): the id on both sides, so the reply
		 * reverses onto the request's conntrack key */
		if (ih[0] == 8 || ih[0] == 0 || ih[0] == 128 || ih[0] == 129) {
			__u16 id = (ih[4] << 8) | ih[5];
			p->sport = id;
			p->dport = id;
		}
	}
	return 0;
}

/* The same for cgroup_skb, whose data starts at the IP header (the family is in
 * skb->protocol); headers are copied with bpf_skb_load_bytes, which also reads past the
 * linear part. 0 ok, 1 not IP, -1 truncated. */
static __always_inline int np__parse_l3(struct __sk_buff *skb, struct pkt *p)
{
	__u32 off;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;
		if (bpf_skb_load_bytes(skb, 0, &ip, sizeof(ip)))
			return -1;
		if (ip.ihl < 5)
			return -1;
		p->family = 4;
		p->proto = ip.protocol;
		__builtin_memcpy(p->saddr, &ip.saddr, 4);
		__builtin_memcpy(p->daddr, &ip.daddr, 4);
		if (np__fragment(p, bpf_ntohs(ip.id), ip.frag_off & bpf_htons(0x2000), ip.frag_off & bpf_htons(0x1fff)))
			return 0;
		off = ip.ihl * 4;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;
		struct andon_frag f = {};
		long l4off;

		if (bpf_skb_load_bytes(skb, 0, &ip6, sizeof(ip6)))
			return -1;
		p->family = 6;
		p->proto = ip6.nexthdr;
		__builtin_memcpy(p->saddr, &ip6.saddr, 16);
		__builtin_memcpy(p->daddr, &ip6.daddr, 16);
		l4off = andon_ipv6_skip_ext_skb(skb, sizeof(ip6), &p->proto, &f);
		if (l4off < 0)
			return -1;
		if (np__fragment(p, f.id, f.first, f.later))
			return 0;
		off = l4off;
	} else {
		return 1;
	}

	if (p->proto == IPPROTO_TCP) {
		struct tcphdr th;
		if (bpf_skb_load_bytes(skb, off, &th, sizeof(th)))
			return -1;
		p->sport = bpf_ntohs(th.source);
		p->dport = bpf_ntohs(th.dest);
		p->tcp_flags = ((__u8 *)&th)[13];
		p->pol_port = p->dport;
	} else if (p->proto == IPPROTO_UDP) {
		struct udphdr uh;
		if (bpf_skb_load_bytes(skb, off, &uh, sizeof(uh)))
			return -1;
		p->sport = bpf_ntohs(uh.source);
		p->dport = bpf_ntohs(uh.dest);
		p->pol_port = p->dport;
	} else if (p->proto == IPPROTO_ICMP || p->proto == IPPROTO_ICMPV6_) {
		__u8 ih[8];
		if (bpf_skb_load_bytes(skb, off, ih, sizeof(ih)))
			return -1;
		p->icmp_type = ih[0];
		p->icmp_code = ih[1];
		p->pol_port = NP_POL_ICMP_TYPE(ih[0]); /* type 0 is echo reply, not "any" */
		if (ih[0] == 8 || ih[0] == 0 || ih[0] == 128 || ih[0] == 129) {
			__u16 id = (ih[4] << 8) | ih[5];
			p->sport = id;
			p->dport = id;
		}
	}
	return 0;
}

static __always_inline void np__ct_key(struct np_ct_key *k, const struct pkt *p, __u32 ifindex, int reverse)
{
	if (reverse) {
		__builtin_memcpy(k->saddr, p->daddr, 16);
		__builtin_memcpy(k->daddr, p->saddr, 16);
		k->sport = p->dport;
		k->dport = p->sport;
	} else {
		__builtin_memcpy(k->saddr, p->saddr, 16);
		__builtin_memcpy(k->daddr, p->daddr, 16);
		k->sport = p->sport;
		k->dport = p->dport;
	}
	k->proto = p->proto;
	k->family = p->family;
	k->pad = 0;
	k->ifindex = ifindex;
}

static __always_inline __u64 np__ct_lifetime(const struct np_ct_val *v, __u8 proto)
{
	if (proto == IPPROTO_TCP) {
		if ((v->flags & (NP_CT_FIN_FWD | NP_CT_FIN_REV)) == (NP_CT_FIN_FWD | NP_CT_FIN_REV))
			return CT_TCP_CLOSE;
		return (v->flags & NP_CT_REPLY_SEEN) ? CT_TCP_EST : CT_TCP_SYN;
	}
	if (proto == IPPROTO_UDP)
		return CT_UDP;
	return CT_ICMP;
}

static __always_inline __u32 np__identity(const __u8 *addr, __u8 family)
{
	struct np_ip_key k = {};
	struct np_ip_val *v;

	k.prefixlen = 32 + (family == 4 ? 32 : 128);
	k.family = family;
	__builtin_memcpy(k.addr, addr, 16);
	v = bpf_map_lookup_elem(&np_ipcache, &k);
	return v ? v->identity : NP_ID_WORLD;
}

static __always_inline struct np_pol_val *np__pol(__u32 gen, int deny, struct np_pol_key *k)
{
	if (gen & 1)
		return deny ? bpf_map_lookup_elem(&np_deny1, k) : bpf_map_lookup_elem(&np_allow1, k);
	return deny ? bpf_map_lookup_elem(&np_deny0, k) : bpf_map_lookup_elem(&np_allow0, k);
}

/* specific peer first, then any peer: the longest prefix inside each is Cilium's order */
static __always_inline struct np_pol_val *np__lookup(__u32 gen, int deny, __u32 ep, __u32 peer, __u8 dir,
						     const struct pkt *p)
{
	struct np_pol_key k = {
		.prefixlen = NP_POL_PREFIX_FULL,
		.ep_identity = ep,
		.peer_identity = peer,
		.direction = dir,
		.proto = p->proto,
		.dport = bpf_htons(p->pol_port),
	};
	struct np_pol_val *v = np__pol(gen, deny, &k);
	if (v)
		return v;
	k.peer_identity = 0;
	return np__pol(gen, deny, &k);
}

static __always_inline void np__account(__u32 ifindex, __u8 dir, __u8 verdict, __u32 len)
{
	struct np_cnt_key k = { .ifindex = ifindex, .direction = dir };
	struct np_cnt_val *c = bpf_map_lookup_elem(&np_counters, &k);

	if (!c) {
		struct np_cnt_val zero = {};
		bpf_map_update_elem(&np_counters, &k, &zero, BPF_NOEXIST);
		c = bpf_map_lookup_elem(&np_counters, &k);
		if (!c)
			return;
	}
	if (verdict == NP_VERDICT_DROPPED) {
		c->drop_packets++;
		c->drop_bytes += len;
	} else if (verdict == NP_VERDICT_AUDIT) {
		c->audit_packets++;
		c->audit_bytes += len;
	} else {
		c->fwd_packets++;
		c->fwd_bytes += len;
	}
}

struct verdict {
	__u32 src_id;
	__u32 dst_id;
	__u32 policy_id;
	__u32 rule_index;
	__u8 verdict;
	__u8 drop_reason;
	__u8 match_type;
	__u8 is_reply;
	__u8 flags;
};

static __always_inline void np__emit(__u32 len, const struct where *w, const struct pkt *p,
				     const struct verdict *v, __u8 dir)
{
	struct np_flow *f = bpf_ringbuf_reserve(&np_flows, sizeof(*f), 0);

	if (!f) {
		np__count(NP_STAT_RING_FULL);
		return;
	}
	f->ts = bpf_ktime_get_boot_ns();
	f->ifindex = w->ifindex;
	f->src_identity = v->src_id;
	f->dst_identity = v->dst_id;
	f->policy_id = v->policy_id;
	f->rule_index = v->rule_index;
	f->len = len;
	__builtin_memcpy(f->saddr, p->saddr, 16);
	__builtin_memcpy(f->daddr, p->daddr, 16);
	f->sport = p->sport;
	f->dport = p->dport;
	f->family = p->family;
	f->proto = p->proto;
	f->verdict = v->verdict;
	f->drop_reason = v->drop_reason;
	f->direction = dir;
	f->is_reply = v->is_reply;
	f->match_type = v->match_type;
	f->tcp_flags = p->tcp_flags;
	f->icmp_type = p->icmp_type;
	f->icmp_code = p->icmp_code;
	f->flags = v->flags;
	f->pad = 0;
	f->cgroup_id = w->cgroup_id;
	bpf_ringbuf_submit(f, 0);
}

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

/* The policy's verdict on a new connection's first packet (no conntrack hit): deny tries, then
 * allow tries, then the endpoint's default deny and audit mode. Fills `v`. */
static __always_inline void np__policy(const struct np_endpoint *ep, const struct pkt *p, __u8 dir,
				       struct verdict *v)
{
	__u32 zero = 0, gen = 0, peer, *g;
	struct np_pol_val *pv;

	np__count(NP_STAT_POLICY_LOOKUPS);
	g = bpf_map_lookup_elem(&np_gen, &zero);
	if (g)
		gen = *g; /* read once: this packet sees one generation, whole */
	if (dir == NP_DIR_EGRESS) {
		peer = np__identity(p->daddr, p->family);
		v->src_id = ep->identity;
		v->dst_id = peer;
	} else {
		peer = np__identity(p->saddr, p->family);
		v->src_id = peer;
		v->dst_id = ep->identity;
	}

	pv = np__lookup(gen, 1, ep->identity, peer, dir, p);
	if (pv) {
		v->verdict = NP_VERDICT_DROPPED; /* an enforced deny entry: deny wins */
		v->drop_reason = NP_DROP_POLICY_DENY;
	} else {
		struct np_pol_val *allow = np__lookup(gen, 0, ep->identity, peer, dir, p);
		int dd = !allow && (ep->flags & (dir == NP_DIR_EGRESS ? NP_EP_DENY_EGRESS : NP_EP_DENY_INGRESS));
		/* default deny switched on by audited policies only: reports, lets pass */
		int dd_audit = ep->flags & (dir == NP_DIR_EGRESS ? NP_EP_AUDIT_DD_EGRESS : NP_EP_AUDIT_DD_INGRESS);

		if (dd && !dd_audit) {
			v->verdict = NP_VERDICT_DROPPED;
		} else {
			pv = np__lookup(gen, 1, ep->identity, peer, dir | NP_POL_DIR_AUDIT, p);
			if (pv) {
				v->verdict = NP_VERDICT_AUDIT; /* what the audited deny entry would have done */
				v->drop_reason = NP_DROP_POLICY_DENY;
			} else if (allow) {
				pv = allow;
				v->verdict = NP_VERDICT_FORWARDED;
			} else if (dd) {
				v->verdict = NP_VERDICT_AUDIT;
			} else {
				v->verdict = NP_VERDICT_FORWARDED; /* no policy selects this direction */
			}
		}
		if (!pv && dd) {
			v->drop_reason = NP_DROP_POLICY;
			v->policy_id = dir == NP_DIR_EGRESS ? ep->deny_policy_egress : ep->deny_policy_ingress;
		}
	}
	if (pv) {
		v->policy_id = pv->policy_id;
		v->rule_index = pv->rule_index;
		v->match_type = pv->match_type;
	}
	if (v->verdict == NP_VERDICT_DROPPED && (ep->flags & NP_EP_AUDIT)) {
		v->verdict = NP_VERDICT_AUDIT;
		v->flags |= NP_FLOW_F_EP_AUDIT;
	}
}

/* A first fragment leaves its ports for the rest of its datagram; a later one takes them, or,
 * when its first was not seen (lost, reordered, or sent before the program was attached), is
 * counted and keeps no ports: only rules without a port can allow it. 1 for that miss. */
static __always_inline int np__frag(struct pkt *p)
{
	struct np_frag_key k = { .id = p->frag_id, .proto = p->proto, .family = p->family };
	struct np_frag_val *v;

	__builtin_memcpy(k.saddr, p->saddr, 16);
	__builtin_memcpy(k.daddr, p->daddr, 16);
	if (p->frag_first) {
		struct np_frag_val nv = {
			.sport = p->sport, .dport = p->dport, .pol_port = p->pol_port,
			.icmp_type = p->icmp_type, .icmp_code = p->icmp_code,
		};
		bpf_map_update_elem(&np_frags, &k, &nv, BPF_ANY);
		return 0;
	}
	v = bpf_map_lookup_elem(&np_frags, &k);
	if (!v) {
		np__count(NP_STAT_FRAG_MISS);
		return 1;
	}
	p->sport = v->sport;
	p->dport = v->dport;
	p->pol_port = v->pol_port;
	p->icmp_type = v->icmp_type;
	p->icmp_code = v->icmp_code;
	return 0;
}

/* The verdict on one packet of endpoint `ep` (parsed into `p`, `rc` from the parser):
 * 1 pass, 0 drop. Shared by the TC and the cgroup_skb programs. */
static __always_inline int np__decide(struct __sk_buff *skb, const struct where *w, struct np_endpoint *ep,
				      struct pkt *pp, int rc, __u8 dir)
{
	__u32 ifindex = w->key;
	struct pkt p = *pp;
	struct verdict v = {};
	struct np_ct_key ck;
	struct np_ct_val *ct;
	int frag_miss = 0;
	__u64 now;

	np__count(NP_STAT_PACKETS);
	if (rc > 0) {
		np__count(NP_STAT_NON_IP);
		return 1;
	}
	if (rc < 0) {
		np__count(NP_STAT_BAD_HDR);
		v.verdict = NP_VERDICT_DROPPED;
		v.drop_reason = NP_DROP_CT_INVALID_HDR;
		np__account(ifindex, dir, NP_VERDICT_DROPPED, skb->len);
		np__emit(skb->len, w, &p, &v, dir);
		return 0;
	}
	if (p.fragment)
		np__count(NP_STAT_FRAGMENTS);
	if (p.fragment || p.frag_first)
		frag_miss = np__frag(&p);
	/* neighbour discovery (133-137) and MLD (130-132, 143) are link plumbing, not
	 * connections: Cilium answers them itself; here they pass, counted */
	if (p.proto == IPPROTO_ICMPV6_ && ((p.icmp_type >= 130 && p.icmp_type <= 137) || p.icmp_type == 143)) {
		np__count(NP_STAT_ND);
		return 1;
	}

	/* -- conntrack: the original direction, then the reversed tuple (a reply) ---------- */
	now = bpf_ktime_get_boot_ns();
	np__ct_key(&ck, &p, ifindex, 0);
	ct = bpf_map_lookup_elem(&np_ct, &ck);
	if (!ct) {
		np__ct_key(&ck, &p, ifindex, 1);
		ct = bpf_map_lookup_elem(&np_ct, &ck);
		v.is_reply = ct != 0;
	}
	if (ct && now - ct->last_seen > np__ct_lifetime(ct, p.proto)) {
		bpf_map_delete_elem(&np_ct, &ck); /* expired: decide again as a new connection */
		ct = 0;
		v.is_reply = 0;
	}
	if (ct) {
		int report = 0;

		np__count(NP_STAT_CT_HIT);
		ct->last_seen = now;
		__sync_fetch_and_add(&ct->packets, 1);
		__sync_fetch_and_add(&ct->bytes, skb->len);
		if (v.is_reply && !(ct->flags & NP_CT_REPLY_SEEN)) {
			ct->flags |= NP_CT_REPLY_SEEN;
			report = 1;
		}
		if (p.proto == IPPROTO_TCP && (p.tcp_flags & (TCP_FIN | TCP_RST))) {
			if (p.tcp_flags & TCP_RST)
				ct->flags |= NP_CT_FIN_FWD | NP_CT_FIN_REV;
			else
				ct->flags |= v.is_reply ? NP_CT_FIN_REV : NP_CT_FIN_FWD;
			report = 1;
		}
		v.verdict = ct->verdict;
		if (report) {
			v.src_id = v.is_reply ? ct->dst_identity : ct->src_identity;
			v.dst_id = v.is_reply ? ct->src_identity : ct->dst_identity;
			v.policy_id = ct->policy_id;
			v.rule_index = ct->rule_index;
			v.match_type = ct->match_type;
			v.flags = (ct->flags & NP_CT_AUDIT) ? NP_FLOW_F_EP_AUDIT : 0;
			np__emit(skb->len, w, &p, &v, dir);
		}
		np__account(ifindex, dir, v.verdict, skb->len);
		return 1;
	}

	/* -- policy -------------------------------------------------------------------------- */
	np__policy(ep, &p, dir, &v);
	/* default deny of a fragment whose ports are unknown: say why, as Cilium does */
	if (frag_miss && v.drop_reason == NP_DROP_POLICY)
		v.drop_reason = NP_DROP_FRAG_NOT_FOUND;

	if (v.verdict == NP_VERDICT_DROPPED) {
		np__account(ifindex, dir, v.verdict, skb->len);
		np__emit(skb->len, w, &p, &v, dir);
		return 0;
	}

	/* -- a new connection: remember it so its replies and later packets skip the policy -- */
	{
		struct np_ct_val nv = {
			.created = now,
			.last_seen = now,
			.packets = 1,
			.bytes = skb->len,
			.policy_id = v.policy_id,
			.rule_index = v.rule_index,
			.src_identity = v.src_id,
			.dst_identity = v.dst_id,
			.flags = v.verdict == NP_VERDICT_AUDIT ? NP_CT_AUDIT : 0,
			.direction = dir,
			.match_type = v.match_type,
			.verdict = v.verdict,
		};
		/* a lone RST or a later fragment opens nothing */
		if (!(p.proto == IPPROTO_TCP && (p.tcp_flags & TCP_RST)) && !p.fragment) {
			np__ct_key(&ck, &p, ifindex, 0);
			if (bpf_map_update_elem(&np_ct, &ck, &nv, BPF_ANY) == 0) {
				np__count(NP_STAT_CT_NEW);
				v.flags |= NP_FLOW_F_CT_NEW;
			} else {
				np__count(NP_STAT_CT_FULL);
			}
		}
	}
	np__account(ifindex, dir, v.verdict, skb->len);
	np__emit(skb->len, w, &p, &v, dir);
	return 1;
}

static __always_inline int np__tc(struct __sk_buff *skb, __u8 dir)
{
	struct where w = { .key = skb->ifindex, .ifindex = skb->ifindex };
	struct np_endpoint *ep = bpf_map_lookup_elem(&np_endpoints, &w.key);
	struct pkt p = {};
	int rc;

	if (!ep) {
		np__count(NP_STAT_UNMANAGED);
		return TC_ACT_OK;
	}
	rc = np__parse(skb, &p);
	return np__decide(skb, &w, ep, &p, rc, dir) ? TC_ACT_OK : TC_ACT_SHOT;
}

SEC("tc")
int tc__from_endpoint(struct __sk_buff *skb)
{
	return np__tc(skb, NP_DIR_EGRESS);
}

SEC("tc")
int tc__to_endpoint(struct __sk_buff *skb)
{
	return np__tc(skb, NP_DIR_INGRESS);
}

/* how many cgroup levels below an endpoint cgroup a socket's cgroup may be */
#define NP_CG_MAX_DEPTH 16

/* The endpoint of the socket's cgroup: its own config, else the deepest ancestor's. */
static __always_inline struct np_endpoint *np__cg_endpoint(struct __sk_buff *skb, __u64 *cgid)
{
	__u64 id = bpf_skb_cgroup_id(skb);
	struct np_endpoint *ep = bpf_map_lookup_elem(&np_cgroups, &id);
	int level;

	if (ep) {
		*cgid = id;
		return ep;
	}
	for (level = NP_CG_MAX_DEPTH; level >= 1; level--) {
		id = bpf_skb_ancestor_cgroup_id(skb, level);
		if (!id)
			continue; /* deeper than the socket's own cgroup */
		ep = bpf_map_lookup_elem(&np_cgroups, &id);
		if (ep) {
			*cgid = id;
			return ep;
		}
	}
	return 0;
}

/* The same for the calling task's cgroup (connect: process context). */
static __always_inline struct np_endpoint *np__cg_current(__u64 *cgid)
{
	__u64 id = bpf_get_current_cgroup_id();
	struct np_endpoint *ep = bpf_map_lookup_elem(&np_cgroups, &id);
	int level;

	if (ep) {
		*cgid = id;
		return ep;
	}
	for (level = NP_CG_MAX_DEPTH; level >= 1; level--) {
		id = bpf_get_current_ancestor_cgroup_id(level);
		if (!id)
			continue;
		ep = bpf_map_lookup_elem(&np_cgroups, &id);
		if (ep) {
			*cgid = id;
			return ep;
		}
	}
	return 0;
}

static __always_inline int np__cg(struct __sk_buff *skb, __u8 dir)
{
	struct where w = {};
	struct np_endpoint *ep = np__cg_endpoint(skb, &w.cgroup_id);
	struct pkt p = {};
	int rc;

	if (!ep) {
		np__count(NP_STAT_UNMANAGED);
		return 1;
	}
	w.key = NP_KEY_CGROUP | (__u32)(w.cgroup_id & 0x7fffffff);
	rc = np__parse_l3(skb, &p);
	return np__decide(skb, &w, ep, &p, rc, dir);
}

/* return 1 passes, 0 drops (on egress the sending call gets EPERM) */
SEC("cgroup_skb/egress")
int cgroup_skb__egress(struct __sk_buff *skb)
{
	return np__cg(skb, NP_DIR_EGRESS);
}

SEC("cgroup_skb/ingress")
int cgroup_skb__ingress(struct __sk_buff *skb)
{
	return np__cg(skb, NP_DIR_INGRESS);
}

/* TCP ignores an error from sending its SYN (tcp_connect() passes on ECONNREFUSED only, and
 * cgroup_skb programs cannot choose the error), so a SYN dropped at cgroup_skb egress would
 * leave connect() retrying until its timeout. The connect hooks decide the same egress policy
 * before anything is sent: a drop makes connect() fail with EPERM at once, reported as a
 * DROPPED flow with a SYN and no source address yet. What passes (or is only audited) is
 * decided, tracked and reported again on the SYN by cgroup_skb__egress. UDP connect() sends
 * nothing: its datagrams are decided at cgroup_skb (send() gets EPERM). */
static __always_inline int np__connect(struct bpf_sock_addr *ctx, __u8 family)
{
	struct where w = {};
	struct np_endpoint *ep;
	struct pkt p = {};
	struct verdict v = {};

	if (ctx->type != 1 /* SOCK_STREAM */)
		return 1;
	ep = np__cg_current(&w.cgroup_id);
	if (!ep)
		return 1;
	w.key = NP_KEY_CGROUP | (__u32)(w.cgroup_id & 0x7fffffff);
	p.family = family;
	p.proto = IPPROTO_TCP;
	p.tcp_flags = TCP_SYN;
	if (family == 4) {
		__u32 a = ctx->user_ip4;
		__builtin_memcpy(p.daddr, &a, 4);
	} else {
		__u32 a[4] = { ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3] };
		__builtin_memcpy(p.daddr, a, 16);
	}
	p.dport = bpf_ntohs((__u16)ctx->user_port);
	p.pol_port = p.dport;
	np__policy(ep, &p, NP_DIR_EGRESS, &v);
	if (v.verdict != NP_VERDICT_DROPPED)
		return 1;
	np__account(w.key, NP_DIR_EGRESS, v.verdict, 0);
	np__emit(0, &w, &p, &v, NP_DIR_EGRESS);
	return 0;
}

SEC("cgroup/connect4")
int cgroup__connect4(struct bpf_sock_addr *ctx)
{
	return np__connect(ctx, 4);
}

SEC("cgroup/connect6")
int cgroup__connect6(struct bpf_sock_addr *ctx)
{
	return np__connect(ctx, 6);
}
