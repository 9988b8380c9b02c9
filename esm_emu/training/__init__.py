"""Training the emulator: the `emulator:` config schema, the loop, and the train/evaluate/export CLI."""
