"""The facts behind liner's default seccomp profile, as data.

The allowlist is containerd's default (contrib/seccomp, the same facts as moby's
profiles/seccomp/default.json): syscall names, actions and conditions. It is written here
in the Docker profile format (``includes``/``excludes`` by arch, capability and kernel) so
that `linerd.oci.seccomp` turns it into OCI ``linux.seccomp`` with the same converter it
uses for localhost profiles. Arches are Go's names (``amd64``, ``arm64``, ...).
"""

from __future__ import annotations

from typing import Any

EPERM = 1
ENOSYS = 38

# socket(2) address families the default refuses (crypto API sockets, VM sockets).
AF_ALG = 38
AF_VSOCK = 40

# clone(2) flags that create namespaces: only CAP_SYS_ADMIN may pass them.
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
NAMESPACE_FLAGS = (
    CLONE_NEWNS
    | CLONE_NEWCGROUP
    | CLONE_NEWUTS
    | CLONE_NEWIPC
    | CLONE_NEWUSER
    | CLONE_NEWPID
    | CLONE_NEWNET
)

# personality(2) values allowed: PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32,
# and 0xffffffff (a query).
PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)


def _words(text: str) -> list[str]:
    return text.split()


# Allowed for every container on every arch (names unknown to the kernel or to libseccomp
# are skipped by runc).
ALLOWED = _words("""
_llseek _newselect accept accept4 access adjtimex alarm bind brk cachestat capget capset
chdir chmod chown chown32 clock_adjtime clock_adjtime64 clock_getres clock_getres_time64
clock_gettime clock_gettime64 clock_nanosleep clock_nanosleep_time64 close close_range
connect copy_file_range creat dup dup2 dup3 epoll_create epoll_create1 epoll_ctl
epoll_ctl_old epoll_pwait epoll_pwait2 epoll_wait epoll_wait_old eventfd eventfd2 execve
execveat exit exit_group faccessat faccessat2 fadvise64 fadvise64_64 fallocate fanotify_mark
fchdir fchmod fchmodat fchmodat2 fchown fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr
flistxattr flock fork fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64 fsync
ftruncate ftruncate64 futex futex_requeue futex_time64 futex_wait futex_waitv futex_wake
futimesat get_robust_list get_thread_area getcpu getcwd getdents getdents64 getegid
getegid32 geteuid geteuid32 getgid getgid32 getgroups getgroups32 getitimer getpeername
getpgid getpgrp getpid getppid getpriority getrandom getresgid getresgid32 getresuid
getresuid32 getrlimit getrusage getsid getsockname getsockopt gettid gettimeofday getuid
getuid32 getxattr getxattrat inotify_add_watch inotify_init inotify_init1 inotify_rm_watch
io_cancel io_destroy io_getevents io_pgetevents io_pgetevents_time64 io_setup io_submit
ioctl ioprio_get ioprio_set ipc kill landlock_add_rule landlock_create_ruleset
landlock_restrict_self lchown lchown32 lgetxattr link linkat listen listmount listxattr
listxattrat llistxattr lremovexattr lseek lsetxattr lsm_get_self_attr lsm_list_modules
lsm_set_self_attr lstat lstat64 madvise map_shadow_stack membarrier memfd_create
memfd_secret mincore mkdir mkdirat mknod mknodat mlock mlock2 mlockall mmap mmap2 mprotect
mq_getsetattr mq_notify mq_open mq_timedreceive mq_timedreceive_time64 mq_timedsend
mq_timedsend_time64 mq_unlink mremap mseal msgctl msgget msgrcv msgsnd msync munlock
munlockall munmap name_to_handle_at nanosleep newfstatat open openat openat2 pause
pidfd_open pidfd_send_signal pipe pipe2 pkey_alloc pkey_free pkey_mprotect poll ppoll
ppoll_time64 prctl pread64 preadv preadv2 prlimit64 process_mrelease pselect6
pselect6_time64 pwrite64 pwritev pwritev2 read readahead readlink readlinkat readv recv
recvfrom recvmmsg recvmmsg_time64 recvmsg remap_file_pages removexattr removexattrat rename
renameat renameat2 restart_syscall rmdir rseq rt_sigaction rt_sigpending rt_sigprocmask
rt_sigqueueinfo rt_sigreturn rt_sigsuspend rt_sigtimedwait rt_sigtimedwait_time64
rt_tgsigqueueinfo sched_get_priority_max sched_get_priority_min sched_getaffinity
sched_getattr sched_getparam sched_getscheduler sched_rr_get_interval
sched_rr_get_interval_time64 sched_setaffinity sched_setattr sched_setparam
sched_setscheduler sched_yield seccomp select semctl semget semop semtimedop
semtimedop_time64 send sendfile sendfile64 sendmmsg sendmsg sendto set_robust_list
set_thread_area set_tid_address setfsgid setfsgid32 setfsuid setfsuid32 setgid setgid32
setgroups setgroups32 setitimer setpgid setpriority setregid setregid32 setresgid
setresgid32 setresuid setresuid32 setreuid setreuid32 setrlimit setsid setsockopt setuid
setuid32 setxattr setxattrat shmat shmctl shmdt shmget shutdown sigaltstack signalfd
signalfd4 sigprocmask sigreturn socketcall socketpair splice stat stat64 statfs statfs64
statmount statx symlink symlinkat sync sync_file_range syncfs sysinfo tee tgkill time
timer_create timer_delete timer_getoverrun timer_gettime timer_gettime64 timer_settime
timer_settime64 timerfd_create timerfd_gettime timerfd_gettime64 timerfd_settime
timerfd_settime64 times tkill truncate truncate64 ugetrlimit umask uname unlink unlinkat
uretprobe utime utimensat utimensat_time64 utimes vfork vmsplice wait4 waitid waitpid write
writev
""")

_ARM = _words("arm_fadvise64_64 arm_sync_file_range sync_file_range2 breakpoint cacheflush set_tls")

# Allowed only on these arches.
BY_ARCH: dict[str, list[str]] = {
    "amd64": ["arch_prctl", "modify_ldt"],
    "386": ["modify_ldt"],
    "arm": _ARM,
    "arm64": _ARM,
    "ppc64le": ["sync_file_range2", "swapcontext"],
    "s390": ["s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr"],
    "s390x": ["s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr"],
    "riscv64": ["riscv_flush_icache", "riscv_hwprobe"],
}

# Allowed only while the container holds the capability (in its bounding set).
BY_CAPABILITY: dict[str, list[str]] = {
    "CAP_DAC_READ_SEARCH": ["open_by_handle_at"],
    "CAP_SYS_ADMIN": _words("""
        bpf clone clone3 fanotify_init fsconfig fsmount fsopen fspick lookup_dcookie mount
        mount_setattr move_mount open_tree perf_event_open quotactl quotactl_fd setdomainname
        sethostname setns syslog umount umount2 unshare
    """),
    "CAP_SYS_BOOT": ["reboot"],
    "CAP_SYS_CHROOT": ["chroot"],
    "CAP_SYS_MODULE": ["delete_module", "init_module", "finit_module"],
    "CAP_SYS_PACCT": ["acct"],
    "CAP_SYS_PTRACE": _words("""
        kcmp pidfd_getfd process_madvise process_vm_readv process_vm_writev ptrace
    """),
    "CAP_SYS_RAWIO": ["iopl", "ioperm"],
    "CAP_SYS_TIME": ["settimeofday", "stime", "clock_settime", "clock_settime64"],
    "CAP_SYS_TTY_CONFIG": ["vhangup"],
    "CAP_SYS_NICE": ["get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"],
    "CAP_SYSLOG": ["syslog"],
    "CAP_BPF": ["bpf"],
    "CAP_PERFMON": ["perf_event_open"],
}

# Allowed to everyone from this kernel on (ptrace no longer bypasses seccomp since 4.8).
SINCE_KERNEL: dict[str, list[str]] = {
    "4.8": ["process_vm_readv", "process_vm_writev", "ptrace"],
}

# The arches one filter covers, by the host's arch: native first, then its compat ABIs.
ARCH_MAP: dict[str, list[str]] = {
    "amd64": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "386": ["SCMP_ARCH_X86"],
    "arm64": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
    "arm": ["SCMP_ARCH_ARM"],
    "s390x": ["SCMP_ARCH_S390X", "SCMP_ARCH_S390"],
    "ppc64le": ["SCMP_ARCH_PPC64LE"],
    "riscv64": ["SCMP_ARCH_RISCV64"],
    "loong64": ["SCMP_ARCH_LOONGARCH64"],
}


def _allow(names: list[str], **conditions: Any) -> dict[str, Any]:
    return {"names": names, "action": "SCMP_ACT_ALLOW", **conditions}


def _arg(index: int, value: int, op: str, value_two: int = 0) -> dict[str, Any]:
    return {"index": index, "value": value, "valueTwo": value_two, "op": op}


def docker_profile() -> dict[str, Any]:
    """The default profile in the Docker format, a fresh object per call."""
    s390 = ["s390", "s390x"]
    rules: list[dict[str, Any]] = [_allow(list(ALLOWED))]
    # socket(2) for every family but AF_ALG and AF_VSOCK: three single-condition ranges,
    # since two "!=" conditions on one argument would be ORed by runc.
    rules += [
        _allow(["socket"], args=[_arg(0, AF_ALG, "SCMP_CMP_LT")]),
        _allow(["socket"], args=[_arg(0, AF_ALG + 1, "SCMP_CMP_EQ")]),
        _allow(["socket"], args=[_arg(0, AF_VSOCK, "SCMP_CMP_GT")]),
    ]
    rules += [_allow(["personality"], args=[_arg(0, p, "SCMP_CMP_EQ")]) for p in PERSONALITIES]
    rules += [_allow(n, includes={"minKernel": k}) for k, n in SINCE_KERNEL.items()]
    rules += [_allow(n, includes={"arches": [a]}) for a, n in BY_ARCH.items()]
    rules += [_allow(n, includes={"caps": [c]}) for c, n in BY_CAPABILITY.items()]
    # Without CAP_SYS_ADMIN: clone(2) without namespace flags (the flags are argument 1 on
    # s390), and clone3(2) fails with ENOSYS so that libcs fall back to clone(2).
    masked = "SCMP_CMP_MASKED_EQ"
    rules += [
        _allow(
            ["clone"],
            args=[_arg(0, NAMESPACE_FLAGS, masked)],
            excludes={"caps": ["CAP_SYS_ADMIN"], "arches": s390},
        ),
        _allow(
            ["clone"],
            args=[_arg(1, NAMESPACE_FLAGS, masked)],
            includes={"arches": s390},
            excludes={"caps": ["CAP_SYS_ADMIN"]},
        ),
        {
            "names": ["clone3"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": ENOSYS,
            "excludes": {"caps": ["CAP_SYS_ADMIN"]},
        },
    ]
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
        "archMap": [
            {"architecture": arches[0], "subArchitectures": arches[1:]}
            for arches in ARCH_MAP.values()
        ],
        "syscalls": rules,
    }
