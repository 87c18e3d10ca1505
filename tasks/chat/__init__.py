"""The chat format: grammar, markers, stop markers, turn rules, sample prompts."""
