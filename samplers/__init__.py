"""Samplers and unmasking schedules."""
