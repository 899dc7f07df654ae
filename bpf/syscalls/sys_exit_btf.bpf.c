/* SPDX-License-Identifier: Apache-2.0 */
/* The syscall dispatcher built for tp_btf: direct BTF loads instead of probe-read helper
 * calls on the hot path. Same source as sys_exit.bpf.c; see ANDON_BTF in andon.h. */
#define ANDON_BTF 1
#include "sys_exit.bpf.c"
