/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Network policy datapath: the wire structs and map layouts shared by
 * bpf/enforce/policy.bpf.c, bpf/enforce/xdp_fw.bpf.c and src/andon/netpolicy/datapath.py.
 * Python mirrors every struct field by field (tests/kernel/test_netpolicy_datapath.py
 * compares the BTF of the built objects with the Python formats).
 *
 * Directions are the ENDPOINT's, as Cilium and Hubble name them. The TC programs sit on
 * the endpoint's host-side veth:
 *   clsact ingress of the host veth = packets the endpoint sent   = its EGRESS
 *   clsact egress  of the host veth = packets going into endpoint = its INGRESS
 *
 * Numbers users see are the ecosystem's own: verdicts are Hubble's flow.Verdict values,
 * drop reasons Cilium's drop codes (Hubble's DropReason), match types Cilium's
 * POLICY_MATCH_* (Hubble's policy_match_type).
 */
#ifndef ANDON_NETPOLICY_H
#define ANDON_NETPOLICY_H

#define NP_DIR_INGRESS 0
#define NP_DIR_EGRESS 1

/* flow.Verdict */
#define NP_VERDICT_FORWARDED 1
#define NP_VERDICT_DROPPED 2
#define NP_VERDICT_AUDIT 4

/* policy map verdicts */
#define NP_ALLOW 1
#define NP_DENY 2

/* Cilium drop reasons (flow.DropReason) */
#define NP_DROP_NONE 0
#define NP_DROP_POLICY 133          /* POLICY_DENIED: no allow entry and default deny is on */
#define NP_DROP_CT_INVALID_HDR 135  /* CT_TRUNCATED_OR_INVALID_HEADER: L3/L4 header cut short */
#define NP_DROP_CT_INSERT 155       /* CT_MAP_INSERTION_FAILED */
#define NP_DROP_FRAG_NOT_FOUND 175  /* FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND: default deny of a later
                                     * fragment whose first was not seen (its ports unknown) */
#define NP_DROP_POLICY_DENY 181     /* POLICY_DENY: a deny entry matched */

/* Cilium POLICY_MATCH_* */
#define NP_MATCH_NONE 0
#define NP_MATCH_L3_ONLY 1
#define NP_MATCH_L3_L4 2
#define NP_MATCH_L4_ONLY 3
#define NP_MATCH_ALL 4
#define NP_MATCH_L3_PROTO 5
#define NP_MATCH_PROTO_ONLY 6

/* identities Cilium reserves; an address no LPM prefix covers is "world" */
#define NP_ID_HOST 1
#define NP_ID_WORLD 2

/* ip -> identity: LPM trie. prefixlen counts from `family`: 32 + the address prefix bits.
 * An IPv4 address sits in addr[0..3], the rest zero. */
struct np_ip_key {
	__u32 prefixlen;   /* field 0: prefixlen (u32) */
	__u8 family;       /* field 1: family (u8): 4 or 6 (not AF_*) */
	__u8 pad[3];       /* field 2: pad (u8[3]) */
	__u8 addr[16];     /* field 3: addr (u8[16]) network order */
};

struct np_ip_val {
	__u32 identity;    /* field 0: identity (u32) */
	__u32 flags;       /* field 1: flags (u32): unused, 0 */
};

/* endpoint config: np_endpoints is a hash keyed by the host veth's ifindex (u32); cgroup
 * endpoints (cgroup_skb programs) have the same value in np_cgroups, keyed by the cgroup v2
 * id (u64). Conntrack and counters key an endpoint by a u32: the ifindex, or for a cgroup
 * NP_KEY_CGROUP | the low 31 bits of its id. Both fit: the kernel hands out ifindexes and
 * kernfs inode numbers below 2^31 (xa_limit_31b, idr_alloc_cyclic up to INT_MAX), and the
 * low bits are unique among live cgroups. */
#define NP_KEY_CGROUP 0x80000000
#define NP_EP_DENY_INGRESS 0x01
#define NP_EP_DENY_EGRESS 0x02
#define NP_EP_AUDIT 0x04
#define NP_EP_AUDIT_DD_INGRESS 0x08 /* ingress default deny only audits (switched on by audited policies only) */
#define NP_EP_AUDIT_DD_EGRESS 0x10  /* same for egress */
struct np_endpoint {
	__u32 identity;           /* field 0: identity (u32) of the endpoint */
	__u32 flags;              /* field 1: flags (u32): NP_EP_* */
	__u32 deny_policy_ingress;/* field 2: deny_policy_ingress (u32): policy that switched ingress default deny on */
	__u32 deny_policy_egress; /* field 3: deny_policy_egress (u32): same for egress */
};

/* Policy maps: LPM tries, one for allow entries and one for deny entries, two generations
 * of each. The key is matched bytewise from `ep_identity`; a wildcard is a shorter prefix:
 *   NP_POL_PREFIX_PEER  (72) ep+peer+direction, any proto, any port
 *   NP_POL_PREFIX_PROTO (80) ... + proto, any port
 *   NP_POL_PREFIX_FULL  (96) ... + one port; 80 + n for a block of 2^(16-n) ports, so a
 *                            port range [lo, hi] is at most 30 prefix blocks
 * `peer_identity` 0 = any peer (a second lookup). For ICMP, dport is the ICMP type + 1
 * (NP_POL_ICMP_TYPE): dport 0 means any, and type 0 (echo reply) must not.
 *
 * Audited deny entries (of a policy in audit mode) live in the deny tries under their own
 * key space, NP_POL_DIR_AUDIT set in `direction`: a longest-prefix lookup returns one entry,
 * so an audited entry sharing keys with enforced ones could hide a broader enforced deny
 * (and an audited hit must not skip the allow lookup and default deny). The datapath looks up
 * the enforced deny entries, then the allow entries and default deny, then the audited deny
 * entries (bpf/enforce/policy.bpf.c np__policy). */
#define NP_POL_PREFIX_PEER 72
#define NP_POL_PREFIX_PROTO 80
#define NP_POL_PREFIX_FULL 96
#define NP_POL_DIR_AUDIT 0x80
#define NP_POL_ICMP_TYPE(t) ((__u16)(t) + 1)
struct np_pol_key {
	__u32 prefixlen;      /* field 0: prefixlen (u32) */
	__u32 ep_identity;    /* field 1: ep_identity (u32) */
	__u32 peer_identity;  /* field 2: peer_identity (u32), 0 = any */
	__u8 direction;       /* field 3: direction (u8): NP_DIR_*, | NP_POL_DIR_AUDIT for audited deny entries */
	__u8 proto;           /* field 4: proto (u8): IPPROTO_*, 0 = any (then prefixlen 72) */
	__be16 dport;         /* field 5: dport (be16): network order so port blocks are prefixes; ICMP: type + 1 */
};

#define NP_POL_F_AUDIT 0x01       /* a deny entry that only audits (its key has NP_POL_DIR_AUDIT too) */
struct np_pol_val {
	__u8 verdict;         /* field 0: verdict (u8): NP_ALLOW / NP_DENY */
	__u8 flags;           /* field 1: flags (u8): NP_POL_F_* */
	__u8 match_type;      /* field 2: match_type (u8): NP_MATCH_* this entry gives (from its prefix and peer) */
	__u8 pad;             /* field 3: pad (u8) */
	__u32 policy_id;      /* field 4: policy_id (u32) */
	__u32 rule_index;     /* field 5: rule_index (u32) */
};

/* Connection tracking: LRU hash. The key is the first packet's tuple as seen on ifindex;
 * a reply is found by looking up the reversed tuple. ICMP echo: sport = dport = echo id,
 * so request and reply share the key. */
struct np_ct_key {
	__u8 saddr[16];      /* field 0: saddr (u8[16]) */
	__u8 daddr[16];      /* field 1: daddr (u8[16]) */
	__u16 sport;         /* field 2: sport (u16) host order */
	__u16 dport;         /* field 3: dport (u16) host order */
	__u8 proto;          /* field 4: proto (u8) */
	__u8 family;         /* field 5: family (u8): 4 or 6 */
	__u16 pad;           /* field 6: pad (u16) */
	__u32 ifindex;       /* field 7: ifindex (u32): the endpoint key (ifindex or NP_KEY_CGROUP|id): each
			      * endpoint tracks on its own, so both ends of a connection enforce */
};

#define NP_CT_FIN_FWD 0x01     /* FIN seen from the original sender */
#define NP_CT_FIN_REV 0x02     /* FIN seen from the replier */
#define NP_CT_REPLY_SEEN 0x04  /* a reply was reported once */
#define NP_CT_AUDIT 0x08       /* created by an audit verdict */
struct np_ct_val {
	__u64 created;       /* field 0: created (u64) boot ns */
	__u64 last_seen;     /* field 1: last_seen (u64) boot ns */
	__u64 packets;       /* field 2: packets (u64) both directions */
	__u64 bytes;         /* field 3: bytes (u64) */
	__u32 policy_id;     /* field 4: policy_id (u32) that allowed it */
	__u32 rule_index;    /* field 5: rule_index (u32) */
	__u32 src_identity;  /* field 6: src_identity (u32) of the original direction */
	__u32 dst_identity;  /* field 7: dst_identity (u32) */
	__u8 flags;          /* field 8: flags (u8): NP_CT_* */
	__u8 direction;      /* field 9: direction (u8) of the first packet */
	__u8 match_type;     /* field 10: match_type (u8) */
	__u8 verdict;        /* field 11: verdict (u8) FORWARDED or AUDIT */
	__u32 pad;           /* field 12: pad (u32) */
};

/* per-endpoint counters: PERCPU_HASH keyed by {endpoint key, direction} */
struct np_cnt_key {
	__u32 ifindex;       /* field 0: ifindex (u32): the endpoint key (ifindex or NP_KEY_CGROUP|id) */
	__u32 direction;     /* field 1: direction (u32) */
};

struct np_cnt_val {
	__u64 fwd_packets;   /* field 0: fwd_packets (u64) */
	__u64 fwd_bytes;     /* field 1: fwd_bytes (u64) */
	__u64 drop_packets;  /* field 2: drop_packets (u64) */
	__u64 drop_bytes;    /* field 3: drop_bytes (u64) */
	__u64 audit_packets; /* field 4: audit_packets (u64) */
	__u64 audit_bytes;   /* field 5: audit_bytes (u64) */
};

/* datapath-wide counters: PERCPU_ARRAY indexed by enum np_stat */
enum np_stat {
	NP_STAT_PACKETS = 0,      /* packets seen on managed endpoints */
	NP_STAT_UNMANAGED = 1,    /* packets on an ifindex or cgroup with no endpoint config (passed) */
	NP_STAT_NON_IP = 2,       /* not IPv4/IPv6 (passed: ARP must work) */
	NP_STAT_BAD_HDR = 3,      /* truncated headers (dropped) */
	NP_STAT_RING_FULL = 4,    /* flow records lost: ring full */
	NP_STAT_CT_NEW = 5,       /* conntrack entries created */
	NP_STAT_CT_HIT = 6,       /* packets that skipped the policy via conntrack */
	NP_STAT_CT_FULL = 7,      /* conntrack insert failed */
	NP_STAT_POLICY_LOOKUPS = 8,
	NP_STAT_FRAGMENTS = 9,    /* later IP fragments (no L4 header): ports from their first fragment */
	NP_STAT_ND = 10,          /* ICMPv6 neighbour discovery / MLD: passed, IPv6 cannot work without it */
	NP_STAT_FRAG_MISS = 11,   /* later fragments whose first was not seen: no ports, port-less rules only */
	NP_STAT_MAX = 12,
};

/* A flow record, one per verdict worth reporting: every new connection, every drop,
 * the first reply of a connection, and TCP FIN/RST. Established packets are counted only. */
#define NP_FLOW_F_CT_NEW 0x01    /* this packet created the conntrack entry */
#define NP_FLOW_F_EP_AUDIT 0x02  /* AUDIT because the endpoint is in audit mode */
struct np_flow {
	__u64 ts;            /* field 0: ts (u64) bpf_ktime_get_boot_ns */
	__u32 ifindex;       /* field 1: ifindex (u32) host veth; 0 for a cgroup endpoint */
	__u32 src_identity;  /* field 2: src_identity (u32) */
	__u32 dst_identity;  /* field 3: dst_identity (u32) */
	__u32 policy_id;     /* field 4: policy_id (u32): the entry's, or the default-deny policy's */
	__u32 rule_index;    /* field 5: rule_index (u32) */
	__u32 len;           /* field 6: len (u32) packet bytes */
	__u8 saddr[16];      /* field 7: saddr (u8[16]) */
	__u8 daddr[16];      /* field 8: daddr (u8[16]) */
	__u16 sport;         /* field 9: sport (u16) host order; ICMP: echo id */
	__u16 dport;         /* field 10: dport (u16) host order; ICMP: echo id */
	__u8 family;         /* field 11: family (u8): 4 or 6 */
	__u8 proto;          /* field 12: proto (u8) */
	__u8 verdict;        /* field 13: verdict (u8): NP_VERDICT_* */
	__u8 drop_reason;    /* field 14: drop_reason (u8): NP_DROP_* */
	__u8 direction;      /* field 15: direction (u8): NP_DIR_* */
	__u8 is_reply;       /* field 16: is_reply (u8) */
	__u8 match_type;     /* field 17: match_type (u8): NP_MATCH_* */
	__u8 tcp_flags;      /* field 18: tcp_flags (u8): FIN 0x01 SYN 0x02 RST 0x04 PSH 0x08 ACK 0x10 URG 0x20 */
	__u8 icmp_type;      /* field 19: icmp_type (u8) */
	__u8 icmp_code;      /* field 20: icmp_code (u8) */
	__u8 flags;          /* field 21: flags (u8): NP_FLOW_F_* */
	__u8 pad;            /* field 22: pad (u8) */
	__u64 cgroup_id;     /* field 23: cgroup_id (u64): cgroup endpoints (ifindex 0 then); 0 on a veth */
};

/* XDP host firewall: LPM keyed by source address (same layout as np_ip_key) -> a rule
 * set; each set holds up to NP_FW_RULES (proto, port range) rules with their counters. */
#define NP_FW_RULES 8
struct np_fw_rule {
	__u8 proto;          /* field 0: proto (u8): 0 = any */
	__u8 used;           /* field 1: used (u8): 1 if this slot is a rule */
	__u16 port_lo;       /* field 2: port_lo (u16) host order, 0 = any port */
	__u16 port_hi;       /* field 3: port_hi (u16) */
	__u16 pad;           /* field 4: pad (u16) */
	__u32 rule_id;       /* field 5: rule_id (u32): index into the fw counters */
};

struct np_fw_set {
	struct np_fw_rule rules[NP_FW_RULES]; /* field 0: rules */
};

struct np_fw_cnt {
	__u64 packets;       /* field 0: packets (u64) dropped by the rule */
	__u64 bytes;         /* field 1: bytes (u64) */
};

#define NP_FW_MAX_RULES 1024
/* fw counters beyond the rules: index NP_FW_MAX_RULES counts passed packets */
#define NP_FW_CNT_PASS NP_FW_MAX_RULES

#endif /* ANDON_NETPOLICY_H */
