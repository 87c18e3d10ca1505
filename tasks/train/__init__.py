"""Training: pilot, gate, full, distill."""
