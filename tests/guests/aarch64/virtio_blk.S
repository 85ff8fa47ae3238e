// A virtio-blk driver in a few instructions: finds the disk at the virt board's last
// virtio-mmio slot (where the first virtio device goes, as in QEMU), checks the
// transport's identity, negotiates VIRTIO_F_VERSION_1 only, sets up queue 0 with 8
// entries in guest RAM, reads sector 0 and then writes sector 1 (each request a chain
// of three descriptors: header, data, status), polling the used ring. Results at
// RESULTS (8 bytes each):
//   0x00 MagicValue  0x08 Version  0x10 DeviceID  0x18 Status after FEATURES_OK
//   0x20 QueueNumMax  0x28 used idx at the end  0x30 status byte of the read
//   0x38 status byte of the write  0x40 used length of the read (header excluded:
//   512 + 1)  0x48 used length of the write (1)  0x50 InterruptStatus (then ACKed)
//   0x58 InterruptStatus after the ACK  0x60 DeviceFeatures word 1
// The sector read is left at DATA_IN, the bytes written ((i * 3 + 1) & 0xff) at
// DATA_OUT.
	.include "a64.inc"
	.equ	VIRTIO, 0x0a003e00		// slot 31 of 0x0a000000 + 0x200 * i
	.equ	DESC, 0x40020000		// 8 descriptors of 16 bytes
	.equ	AVAIL, 0x40020100
	.equ	USED, 0x40020200
	.equ	HDR_IN, 0x40021000		// struct virtio_blk_req header: type, reserved, sector
	.equ	HDR_OUT, 0x40021010
	.equ	DATA_IN, 0x40022000
	.equ	DATA_OUT, 0x40022200
	.equ	STATUS_IN, 0x40023000
	.equ	STATUS_OUT, 0x40023001
	.equ	F_NEXT, 1
	.equ	F_WRITE, 2
	.equ	F_NEXT_WRITE, 3

// desc index, address, length, flags, next
	.macro	DESCRIPTOR idx, addr, len, flags, next
	ldr	x1, =DESC + 16 * \idx
	ldr	x2, =\addr
	str	x2, [x1]
	mov	w2, #\len
	str	w2, [x1, #8]
	mov	w2, #\flags
	strh	w2, [x1, #12]
	mov	w2, #\next
	strh	w2, [x1, #14]
	.endm

// Offer the chain at descriptor `head` in avail slot `slot`, notify queue 0, and wait
// until the used index reaches `slot` + 1.
	.macro	SUBMIT slot, head
	ldr	x1, =AVAIL
	mov	w2, #\head
	strh	w2, [x1, #4 + 2 * \slot]
	dmb	ish
	mov	w2, #\slot + 1
	strh	w2, [x1, #2]
	dsb	sy
	str	wzr, [x21, #0x050]		// QueueNotify = 0
	ldr	x1, =USED
1:	dmb	ish
	ldrh	w2, [x1, #2]
	cmp	w2, #\slot + 1
	b.ne	1b
	.endm

	.text
	.global _start
_start:
	ldr	x20, =RESULTS
	ldr	x21, =VIRTIO
	ldr	w1, [x21, #0x000]		// MagicValue
	str	x1, [x20, #0x00]
	ldr	w1, [x21, #0x004]		// Version
	str	x1, [x20, #0x08]
	ldr	w1, [x21, #0x008]		// DeviceID
	str	x1, [x20, #0x10]
	cmp	w1, #2
	b.ne	poweroff			// no block device there: the test says so

	str	wzr, [x21, #0x070]		// Status = 0: reset
	mov	w1, #1				// ACKNOWLEDGE
	str	w1, [x21, #0x070]
	mov	w1, #3				// | DRIVER
	str	w1, [x21, #0x070]
	mov	w1, #1
	str	w1, [x21, #0x014]		// DeviceFeaturesSel = 1
	ldr	w2, [x21, #0x010]		// DeviceFeatures 63:32
	str	x2, [x20, #0x60]
	str	w1, [x21, #0x024]		// DriverFeaturesSel = 1
	str	w1, [x21, #0x020]		// DriverFeatures 63:32 = VERSION_1 (bit 32)
	str	wzr, [x21, #0x024]		// DriverFeaturesSel = 0
	str	wzr, [x21, #0x020]		// DriverFeatures 31:0 = 0
	mov	w1, #0xb			// | FEATURES_OK
	str	w1, [x21, #0x070]
	ldr	w1, [x21, #0x070]		// the device keeps FEATURES_OK if it agrees
	str	x1, [x20, #0x18]
	tbz	w1, #3, poweroff

	str	wzr, [x21, #0x030]		// QueueSel = 0
	ldr	w1, [x21, #0x034]		// QueueNumMax
	str	x1, [x20, #0x20]
	mov	w1, #8
	str	w1, [x21, #0x038]		// QueueNum = 8
	ldr	x1, =DESC
	str	w1, [x21, #0x080]		// QueueDescLow/High
	str	wzr, [x21, #0x084]
	ldr	x1, =AVAIL
	str	w1, [x21, #0x090]		// QueueDriverLow/High
	str	wzr, [x21, #0x094]
	ldr	x1, =USED
	str	w1, [x21, #0x0a0]		// QueueDeviceLow/High
	str	wzr, [x21, #0x0a4]
	mov	w1, #1
	str	w1, [x21, #0x044]		// QueueReady = 1
	mov	w1, #0xf			// | DRIVER_OK
	str	w1, [x21, #0x070]

	// read sector 0: VIRTIO_BLK_T_IN (0)
	ldr	x1, =HDR_IN
	str	xzr, [x1]			// type 0, reserved 0
	str	xzr, [x1, #8]			// sector 0
	mov	w1, #0xff			// status bytes start as "not written"
	ldr	x2, =STATUS_IN
	strb	w1, [x2]
	strb	w1, [x2, #1]
	DESCRIPTOR 0, HDR_IN, 16, F_NEXT, 1
	DESCRIPTOR 1, DATA_IN, 512, F_NEXT_WRITE, 2
	DESCRIPTOR 2, STATUS_IN, 1, F_WRITE, 0
	SUBMIT	0, 0

	// write sector 1: VIRTIO_BLK_T_OUT (1), data (i * 3 + 1) & 0xff
	ldr	x1, =DATA_OUT
	mov	x3, #0
	mov	w4, #1
2:	strb	w4, [x1, x3]
	add	w4, w4, #3
	add	x3, x3, #1
	cmp	x3, #512
	b.ne	2b
	ldr	x1, =HDR_OUT
	mov	x2, #1
	str	x2, [x1]			// type 1, reserved 0
	str	x2, [x1, #8]			// sector 1
	DESCRIPTOR 3, HDR_OUT, 16, F_NEXT, 4
	DESCRIPTOR 4, DATA_OUT, 512, F_NEXT, 5
	DESCRIPTOR 5, STATUS_OUT, 1, F_WRITE, 0
	SUBMIT	1, 3

	ldr	x1, =USED
	ldrh	w2, [x1, #2]
	str	x2, [x20, #0x28]
	ldr	w2, [x1, #4 + 4]		// used ring element 0: id, len
	str	x2, [x20, #0x40]
	ldr	w2, [x1, #12 + 4]		// element 1
	str	x2, [x20, #0x48]
	ldr	x1, =STATUS_IN
	ldrb	w2, [x1]
	str	x2, [x20, #0x30]
	ldrb	w2, [x1, #1]
	str	x2, [x20, #0x38]
	ldr	w2, [x21, #0x060]		// InterruptStatus
	str	x2, [x20, #0x50]
	str	w2, [x21, #0x064]		// InterruptACK
	ldr	w2, [x21, #0x060]
	str	x2, [x20, #0x58]
	b	poweroff

	A64_LIB
