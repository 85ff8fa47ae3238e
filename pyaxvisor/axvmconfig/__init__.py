"""AxVisor's VM config files (the axvmconfig TOML layout) as pyaxvisor
:class:`~pyaxvisor.vm.config.VmConfig` objects.

=================== ==============================================================
:mod:`.schema`      the tables, keys, enumerations and row layouts; the checkers
                    that turn TOML values into checked values or an error
:mod:`.reader`      :func:`~.reader.read_config`, :func:`~.reader.parse_config`:
                    a file → a checked ``VmConfig`` (its rules are listed there)
:mod:`.writer`      :func:`~.writer.render` (a ``VmConfig`` → a file AxVisor and
                    pyaxvisor read) and :func:`~.writer.generate` (a ``VmConfig``
                    for a kernel, with the addresses its format needs)
:mod:`.describe`    :func:`~.describe.describe`: what ``pyaxvisor config check``
                    prints
=================== ==============================================================

What pyaxvisor adds to AxVisor's layout, all ignored by AxVisor's parser or
refused by it only where noted:

* a ``[pyaxvisor]`` table with ``arch`` and ``machine`` (AxVisor takes the
  architecture from its build target; pyaxvisor needs to know which board runs the
  file, and otherwise asks the kernel image);
* on x86_64, ``["isa-debug-exit", iobase, iosize, 0, 0, []]`` in ``emu_devices``:
  QEMU's debug-exit device on ports ``[iobase, iobase + iosize)`` (AxVisor would
  take it as a meta device it does not build).

Decisions where AxVisor's layout leaves room:

* A missing ``[devices]`` table is an error, as in AxVisor (``emu_devices = []``
  and ``passthrough_devices = []`` say "no devices"), so that a file pyaxvisor
  accepts also loads in AxVisor.
* ``dtb_load_addr`` without ``dtb_path`` puts the device tree the board generates
  there (``VmConfig.dtb_addr``).
* ``entry_point`` and ``kernel_load_addr`` may be left out (AxVisor's newest files
  do): the kernel's format places it, as with ``-kernel``.
* ``vm_type`` must be 0, 1 or 2, a ``phys_cpu_sets`` mask must name a CPU, and a
  ``ramdisk_load_addr`` needs its ``ramdisk_path`` (AxVisor would silently default
  or ignore these).
* A virtio device (emu_type 0xE1 block with ``[kernel] disk_path``, 0xE2 network
  card, 0xE3 console) must be at the board's virtio-mmio slot that its place among
  the file's virtio devices gives it (QEMU's order). AxVisor's layout has no field for
  a network card's host end: pyaxvisor takes the row's name as the TAP interface
  (``["tap0", base, 0x200, irq, 0xE2, []]``) and its ``cfg_list``, when not empty, as
  the card's six MAC bytes.
* Values pyaxvisor records but does not use go to ``VmConfig.extra``:
  ``image_location``, ``boot_protocol`` (canonical spelling), ``enable_bios``,
  ``uefi_firmware_path``, ``bios_load_addr`` without ``bios_path``,
  ``address_space_policy``, and
  ``board_devices`` (emulated-device rows that describe the board's own devices).
"""
