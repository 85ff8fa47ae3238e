"""AArch64 (arm_vcpu): the guest trap frame, ESR_EL2 syndrome decoding, PSCI/SMCCC
emulation and the synchronous-exception handler that turns guest traps into exit
reasons."""
