"""x86_64 (x86_vcpu): the per-CPU virtualization state and the vCPU, both on Linux KVM.

The hardware-assisted parts (VMXON/VMRUN, the VMCS/VMCB, the real EPT/NPT) are
done by the kernel; pyaxvisor drives them through ``/dev/kvm``
(:mod:`pyaxvisor.engine.kvm`) and turns KVM exits into the architecture-neutral
exit reasons of :mod:`pyaxvisor.vcpu.exit`.
"""
