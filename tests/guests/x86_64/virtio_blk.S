/* A virtio-blk driver in a few hundred instructions, on the x86 PC board, interrupt
 * driven: 32-bit protected mode, loaded raw at 1 MiB, no paging.
 *
 * Finds the disk at the pc board's last virtio-mmio slot (0xfeb00e00, where the first
 * virtio device goes, as in QEMU), checks the transport's identity, negotiates
 * VIRTIO_F_VERSION_1 only, sets up queue 0 with 8 entries, reads sector 0 and then
 * writes sector 1 (each request a chain of three descriptors: header, data, status).
 * After each notification it waits for the transport's interrupt with `sti; hlt`:
 * the PICs are masked, the slot's line (GSI 12) is routed through the I/O APIC, level
 * triggered, active high, to vector 0x30 of the local APIC (software enabled).
 *
 * The handler takes each interrupt twice on purpose: the first time it reads
 * InterruptStatus and sends the EOI *without* the InterruptACK, so a line that is
 * still high (a level one) interrupts again as soon as the guest sleeps again; the
 * second time it writes the ACK (the device lowers the line) and the EOI. So each
 * request costs exactly two handler runs, four in all; an edge-triggered or pulsed
 * line would give one and leave the guest asleep (the test's timeout).
 *
 * An interrupt that finds InterruptStatus 0 is not the device's (Linux's virtio_mmio
 * answers IRQ_NONE to it): the handler only counts it and sends the EOI. A nested KVM
 * has been seen to deliver one such extra interrupt while a completion is still under
 * way on the device's I/O thread.
 *
 * The handler never returns with IRET (KVM's instruction emulator, which a nested
 * host may run every guest instruction through, has no protected-mode IRET): the
 * guest only takes interrupts inside `sleep` (`sti; hlt`), and the handler drops
 * the interrupt's frame and returns from `sleep` to its caller, interrupts off.
 *
 * Results at RESULTS (4 bytes each):
 *   0x00 MagicValue  0x04 Version  0x08 DeviceID  0x0c Status after FEATURES_OK
 *   0x10 QueueNumMax  0x14 used idx at the end  0x18 status byte of the read
 *   0x1c status byte of the write  0x20 used length of the read (512 + 1)
 *   0x24 used length of the write (1)  0x28 handler runs  0x2c InterruptStatus at
 *   the end  0x30 DeviceFeatures word 1  0x34 handler runs when the read completed
 *   0x38 interrupts taken with InterruptStatus 0 (not counted as runs)
 *   0x40.. InterruptStatus as each handler run read it (8 slots)
 *   0x60 0x600d when the guest got to the end
 * The sector read is left at DATA_IN, the bytes written ((i * 3 + 1) & 0xff) at
 * DATA_OUT. Then the guest powers off through the ACPI PM1a control port.
 */
    .code32
    .equ VIRTIO, 0xfeb00e00         /* slot 7 of 0xfeb00000 + 0x200 * i */
    .equ IOAPIC, 0xfec00000
    .equ LAPIC, 0xfee00000
    .equ GSI, 12
    .equ VECTOR, 0x30
    .equ DESC, 0x200000             /* 8 descriptors of 16 bytes */
    .equ AVAIL, 0x200100
    .equ USED, 0x200200
    .equ HDR_IN, 0x201000           /* struct virtio_blk_req header: type, reserved, sector */
    .equ HDR_OUT, 0x201010
    .equ DATA_IN, 0x202000
    .equ DATA_OUT, 0x202200
    .equ STATUS_IN, 0x203000
    .equ STATUS_OUT, 0x203001
    .equ IDT, 0x204000
    .equ RESULTS, 0x205000
    .equ F_NEXT, 1
    .equ F_WRITE, 2
    .equ F_NEXT_WRITE, 3

/* descriptor idx: address, length, flags, next */
    .macro DESCRIPTOR idx, addr, len, flags, next
    movl $\addr, DESC + 16 * \idx
    movl $0, DESC + 16 * \idx + 4
    movl $\len, DESC + 16 * \idx + 8
    movw $\flags, DESC + 16 * \idx + 12
    movw $\next, DESC + 16 * \idx + 14
    .endm

/* Offer the chain at descriptor `head` in avail slot `slot`, notify queue 0, and
 * sleep until the used index reaches `slot` + 1 after an even number of handler
 * runs (each wake-up is one). */
    .macro SUBMIT slot, head
    movw $\head, AVAIL + 4 + 2 * \slot
    movw $\slot + 1, AVAIL + 2
    movl $0, 0x050(%ebx)            /* QueueNotify = 0 */
1:  call sleep
    testl $1, runs
    jnz 1b
    cmpw $\slot + 1, USED + 2
    jne 1b
    .endm

    .globl _start
_start:
    cli
    mov $0xff, %al                  /* mask both 8259s (their IMRs: OCW1) */
    out %al, $0x21
    out %al, $0xa1
    mov $RESULTS, %edi
    mov $VIRTIO, %ebx

    /* the IDT: one 32-bit interrupt gate, vector 0x30 -> irq (selector 0x10) */
    mov $irq, %eax
    mov %ax, IDT + 8 * VECTOR
    movw $0x10, IDT + 8 * VECTOR + 2
    movw $0x8e00, IDT + 8 * VECTOR + 4
    shr $16, %eax
    mov %ax, IDT + 8 * VECTOR + 6
    lidt idtr

    /* local APIC on (SVR bit 8, spurious vector 0xff); I/O APIC pin 12: vector 0x30,
     * fixed, physical destination APIC 0, active high, level triggered, unmasked */
    movl $0x1ff, LAPIC + 0xf0
    movl $0x10 + 2 * GSI + 1, IOAPIC
    movl $0, IOAPIC + 0x10
    movl $0x10 + 2 * GSI, IOAPIC
    movl $VECTOR | 1 << 15, IOAPIC + 0x10

    mov 0x000(%ebx), %eax           /* MagicValue */
    mov %eax, 0x00(%edi)
    mov 0x004(%ebx), %eax           /* Version */
    mov %eax, 0x04(%edi)
    mov 0x008(%ebx), %eax           /* DeviceID */
    mov %eax, 0x08(%edi)
    cmp $2, %eax
    jne poweroff                    /* no block device there: the test says so */

    movl $0, 0x070(%ebx)            /* Status = 0: reset */
    movl $1, 0x070(%ebx)            /* ACKNOWLEDGE */
    movl $3, 0x070(%ebx)            /* | DRIVER */
    movl $1, 0x014(%ebx)            /* DeviceFeaturesSel = 1 */
    mov 0x010(%ebx), %eax           /* DeviceFeatures 63:32 */
    mov %eax, 0x30(%edi)
    movl $1, 0x024(%ebx)            /* DriverFeaturesSel = 1 */
    movl $1, 0x020(%ebx)            /* DriverFeatures 63:32 = VERSION_1 (bit 32) */
    movl $0, 0x024(%ebx)            /* DriverFeaturesSel = 0 */
    movl $0, 0x020(%ebx)            /* DriverFeatures 31:0 = 0 */
    movl $0xb, 0x070(%ebx)          /* | FEATURES_OK */
    mov 0x070(%ebx), %eax           /* the device keeps FEATURES_OK if it agrees */
    mov %eax, 0x0c(%edi)
    test $8, %eax
    jz poweroff

    movl $0, 0x030(%ebx)            /* QueueSel = 0 */
    mov 0x034(%ebx), %eax           /* QueueNumMax */
    mov %eax, 0x10(%edi)
    movl $8, 0x038(%ebx)            /* QueueNum = 8 */
    movl $DESC, 0x080(%ebx)         /* QueueDescLow/High */
    movl $0, 0x084(%ebx)
    movl $AVAIL, 0x090(%ebx)        /* QueueDriverLow/High */
    movl $0, 0x094(%ebx)
    movl $USED, 0x0a0(%ebx)         /* QueueDeviceLow/High */
    movl $0, 0x0a4(%ebx)
    movl $1, 0x044(%ebx)            /* QueueReady = 1 */
    movl $0xf, 0x070(%ebx)          /* | DRIVER_OK */

    /* read sector 0: VIRTIO_BLK_T_IN (0) */
    movl $0, HDR_IN                 /* type 0 */
    movl $0, HDR_IN + 4             /* reserved */
    movl $0, HDR_IN + 8             /* sector 0 */
    movl $0, HDR_IN + 12
    movw $0xffff, STATUS_IN         /* status bytes start as "not written" */
    DESCRIPTOR 0, HDR_IN, 16, F_NEXT, 1
    DESCRIPTOR 1, DATA_IN, 512, F_NEXT_WRITE, 2
    DESCRIPTOR 2, STATUS_IN, 1, F_WRITE, 0
    SUBMIT 0, 0
    mov runs, %eax
    mov %eax, 0x34(%edi)

    /* write sector 1: VIRTIO_BLK_T_OUT (1), data (i * 3 + 1) & 0xff */
    xor %ecx, %ecx
    mov $1, %al
2:  mov %al, DATA_OUT(%ecx)
    add $3, %al
    inc %ecx
    cmp $512, %ecx
    jne 2b
    movl $1, HDR_OUT                /* type 1 */
    movl $0, HDR_OUT + 4
    movl $1, HDR_OUT + 8            /* sector 1 */
    movl $0, HDR_OUT + 12
    DESCRIPTOR 3, HDR_OUT, 16, F_NEXT, 4
    DESCRIPTOR 4, DATA_OUT, 512, F_NEXT, 5
    DESCRIPTOR 5, STATUS_OUT, 1, F_WRITE, 0
    SUBMIT 1, 3

    movzwl USED + 2, %eax
    mov %eax, 0x14(%edi)
    mov USED + 4 + 4, %eax          /* used ring element 0: id, len */
    mov %eax, 0x20(%edi)
    mov USED + 12 + 4, %eax         /* element 1 */
    mov %eax, 0x24(%edi)
    movzbl STATUS_IN, %eax
    mov %eax, 0x18(%edi)
    movzbl STATUS_OUT, %eax
    mov %eax, 0x1c(%edi)
    mov runs, %eax
    mov %eax, 0x28(%edi)
    mov 0x060(%ebx), %eax           /* InterruptStatus: 0, everything ACKed */
    mov %eax, 0x2c(%edi)
    movl $0x600d, 0x60(%edi)

poweroff:
    mov $0x604, %dx                 /* PM1a_CNT: SLP_EN, SLP_TYP 0 (S5) */
    mov $0x2000, %ax
    out %ax, %dx
3:  hlt
    jmp 3b

/* Returns once the transport's interrupt has been handled, interrupts off. */
sleep:
    sti
    hlt
    jmp sleep                       /* woken by nothing: sleep on */

/* The transport's interrupt (see the top): odd runs leave it pending, even runs ACK.
 * It came in `sleep`: drop its frame (EIP, CS, EFLAGS) and return from `sleep`. */
irq:
    add $12, %esp
    push %eax
    push %ecx
    mov VIRTIO + 0x060, %eax        /* InterruptStatus */
    test %eax, %eax
    jnz 6f
    incl RESULTS + 0x38             /* nothing pending: not this device's (see the top) */
    jmp 5f
6:  mov runs, %ecx
    cmp $8, %ecx
    jae 4f
    mov %eax, RESULTS + 0x40(,%ecx,4)
4:  inc %ecx
    mov %ecx, runs
    test $1, %ecx
    jnz 5f                          /* first run of a pair: no ACK */
    mov %eax, VIRTIO + 0x064        /* InterruptACK */
5:  movl $0, LAPIC + 0xb0           /* EOI */
    pop %ecx
    pop %eax
    ret

    .balign 4
runs:
    .long 0
    .word 0                         /* so that the IDT base is 4-byte aligned */
idtr:
    .word 8 * VECTOR + 7            /* limit: up to the gate of vector 0x30 */
    .long IDT
