"""Training OpenUni on accelerate: configs and presets, the optimiser and schedule, the loop, checkpoints."""
