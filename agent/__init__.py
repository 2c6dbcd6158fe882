"""The machine daemon: inventory, launcher, log shipping, heartbeats."""
