"""Certified training: losses, schedules, attacks, metrics, data, models."""
