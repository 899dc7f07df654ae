/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The socket behind a file descriptor of the current task, shared by the syscall sensor
 * (bpf/syscalls/sys_exit.bpf.c) and the socket data sensor (bpf/net/sockdata.bpf.c).
 * Include after vmlinux.h and <bpf/bpf_core_read.h>.
 */
#ifndef ANDON_FDSOCK_H
#define ANDON_FDSOCK_H

#define S_IFMT 00170000
#define S_IFSOCK 0140000

/* The kernel socket of an open file, or NULL when the file is not a socket. */
static __always_inline struct socket *andon_file_socket(struct file *f)
{
	if (!f)
		return NULL;
	umode_t mode = BPF_CORE_READ(f, f_inode, i_mode);
	if ((mode & S_IFMT) != S_IFSOCK)
		return NULL;
	return (struct socket *)BPF_CORE_READ(f, private_data);
}

/* The open file behind fd in the current task, or NULL. */
static __always_inline struct file *andon_fd_file(long fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	unsigned int max = BPF_CORE_READ(fdt, max_fds);
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *f = NULL;

	if (fd < 0 || fd >= max)
		return NULL;
	bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]);
	return f;
}

/* The same from a tp_btf program: the task, its fd table and the table's size are read
 * with direct (BTF) loads instead of helper calls; the slot still goes through
 * bpf_probe_read_kernel (a slot at a variable index is not a BTF pointer). */
static __always_inline struct file *andon_fd_file_btf(long fd)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct fdtable *fdt = task->files->fdt;
	struct file *f = NULL;

	if (!fdt || fd < 0 || fd >= fdt->max_fds)
		return NULL;
	bpf_probe_read_kernel(&f, sizeof(f), (void *)((__u64)fdt->fd + fd * sizeof(f)));
	return f;
}

/* The kernel socket behind fd in the current task, or NULL when fd is not a socket. */
static __always_inline struct socket *andon_fd_socket(long fd)
{
	return andon_file_socket(andon_fd_file(fd));
}

#endif /* ANDON_FDSOCK_H */
