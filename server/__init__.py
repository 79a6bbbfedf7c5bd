"""The workspace: submission intake, Flower runs hosting contributor strategies,
the leaderboard. It never reads the cohort and never writes official scores."""
