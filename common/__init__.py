"""What two daemons share: config, logging, auth metadata, ids, clocks. Kept small."""
