"""GPU memory governance: what the GPUs are (NVML, or simulated devices in CI), which
card each slot runs on, what every slot keeps loaded on it (the ledger), whether a job fits
(admission and eviction) and whether a card is healthy. Pure decisions apart from the
device sources and the governor that drives them.
"""
