"""Lanes: one studio identity (registration, session, current job) per group of slots, so
one supervisor keeps every GPU busy under a studio that offers a worker one job at a time."""
