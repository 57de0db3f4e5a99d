"""PsyDuck: build, train and sample a small GPT from scratch."""
