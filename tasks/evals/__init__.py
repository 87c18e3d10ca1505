"""The eval stage: loss, bits per byte, chat turns, HumanEval, teacher vs student."""
