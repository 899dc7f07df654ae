/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Host firewall at XDP, the simplest and hottest case: drop by source CIDR, protocol and
 * destination port before the stack allocates an skb. Everything else passes.
 *
 * np_fw_src (LPM on the source address) gives the most specific prefix's rule set; user
 * space copies the rules of every covering, shorter prefix into each set, so one lookup
 * sees all rules that apply. Per-rule drop counters (per CPU) in np_fw_cnt; the last
 * slot counts packets passed.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "../abi/netpolicy.h"
#include "../include/ipv6ext.h"

char LICENSE[] SEC("license") = "GPL";

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, NP_FW_MAX_RULES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct np_ip_key);
	__type(value, struct np_fw_set);
} np_fw_src SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NP_FW_MAX_RULES + 1);
	__type(key, __u32);
	__type(value, struct np_fw_cnt);
} np_fw_cnt SEC(".maps");

static __always_inline void fw__count(__u32 idx, __u64 len)
{
	struct np_fw_cnt *c = bpf_map_lookup_elem(&np_fw_cnt, &idx);
	if (c) {
		c->packets++;
		c->bytes += len;
	}
}

SEC("xdp")
int xdp__host_fw(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct np_ip_key k = {};
	struct np_fw_set *set;
	__u64 len = end - data;
	__u8 proto;
	__u16 dport = 0;
	void *l4;

	if ((void *)(eth + 1) > end)
		return XDP_PASS;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end || ip->ihl < 5)
			return XDP_PASS;
		k.prefixlen = 64;
		k.family = 4;
		__builtin_memcpy(k.addr, &ip->saddr, 4);
		proto = ip->protocol;
		/* later fragments have no ports: only proto-wide rules (port 0) see them */
		l4 = (ip->frag_off & bpf_htons(0x1fff)) ? 0 : (void *)ip + ip->ihl * 4;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > end)
			return XDP_PASS;
		k.prefixlen = 160;
		k.family = 6;
		__builtin_memcpy(k.addr, &ip6->saddr, 16);
		struct andon_frag frag = {};

		proto = ip6->nexthdr;
		l4 = andon_ipv6_skip_ext(ip6 + 1, end, &proto, &frag);
		if (frag.later)
			l4 = 0; /* as for IPv4: no ports, only proto-wide rules */
	} else {
		return XDP_PASS;
	}
	if (l4 && (proto == IPPROTO_TCP || proto == IPPROTO_UDP)) {
		__be16 *ports = l4;
		if ((void *)(ports + 2) <= end)
			dport = bpf_ntohs(ports[1]);
	} else if (l4 && (proto == IPPROTO_ICMP || proto == 58)) {
		__u8 *ih = l4;
		if ((void *)(ih + 1) <= end)
			dport = ih[0]; /* ICMP: the "port" is the type, as in the policy maps */
	}

	set = bpf_map_lookup_elem(&np_fw_src, &k);
	if (set) {
#pragma unroll
		for (int i = 0; i < NP_FW_RULES; i++) {
			struct np_fw_rule *r = &set->rules[i];
			if (!r->used)
				continue;
			if (r->proto && r->proto != proto)
				continue;
			if (r->port_lo && (dport < r->port_lo || dport > r->port_hi))
				continue;
			fw__count(r->rule_id < NP_FW_MAX_RULES ? r->rule_id : 0, len);
			return XDP_DROP;
		}
	}
	fw__count(NP_FW_CNT_PASS, len);
	return XDP_PASS;
}
