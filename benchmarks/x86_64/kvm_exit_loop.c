/* The reference for benchmarks/x86_64.py's exit round trip: the KVM_RUN loop of a
 * minimal VMM in C. One VM with the in-kernel irqchip (as pyaxvisor's), 64 KiB of
 * RAM at 0, one vCPU in real mode at 0x1000 running the guest given as a file;
 * every OUT exit is counted; the OUT to port 0xf4 ends the loop. Prints
 * "<exits> <seconds of the run loop>". */
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static int check(int r, const char *what) {
    if (r < 0) { perror(what); exit(2); }
    return r;
}

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: %s GUEST\n", argv[0]); return 2; }
    int kvm = check(open("/dev/kvm", O_RDWR), "/dev/kvm");
    int vm = check(ioctl(kvm, KVM_CREATE_VM, 0), "KVM_CREATE_VM");
    check(ioctl(vm, KVM_CREATE_IRQCHIP, 0), "KVM_CREATE_IRQCHIP");
    unsigned char *mem = mmap(0, 0x10000, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    struct kvm_userspace_memory_region region = {0, 0, 0, 0x10000, (unsigned long)mem};
    check(ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region), "KVM_SET_USER_MEMORY_REGION");
    FILE *f = fopen(argv[1], "rb");
    if (!f) { perror(argv[1]); return 2; }
    fread(mem + 0x1000, 1, 0xF000, f);
    fclose(f);
    int cpu = check(ioctl(vm, KVM_CREATE_VCPU, 0), "KVM_CREATE_VCPU");
    int size = check(ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0), "KVM_GET_VCPU_MMAP_SIZE");
    struct kvm_run *run = mmap(0, size, PROT_READ | PROT_WRITE, MAP_SHARED, cpu, 0);
    struct kvm_sregs sregs;
    check(ioctl(cpu, KVM_GET_SREGS, &sregs), "KVM_GET_SREGS");
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    check(ioctl(cpu, KVM_SET_SREGS, &sregs), "KVM_SET_SREGS");
    struct kvm_regs regs;
    memset(&regs, 0, sizeof regs);
    regs.rip = 0x1000;
    regs.rflags = 2;
    check(ioctl(cpu, KVM_SET_REGS, &regs), "KVM_SET_REGS");
    struct timespec a, b;
    long exits = 0;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (;;) {
        check(ioctl(cpu, KVM_RUN, 0), "KVM_RUN");
        if (run->exit_reason != KVM_EXIT_IO) {
            fprintf(stderr, "unexpected exit %u\n", run->exit_reason);
            return 1;
        }
        exits++;
        if (run->io.port == 0xf4)
            break;
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%ld %.6f\n", exits, (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9);
    return 0;
}
