"""Pages a person reads: the onboarding report of a new hospital and the report of a whole run."""
