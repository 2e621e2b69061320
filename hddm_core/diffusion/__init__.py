"""Diffusion maths: schedules, prediction types, time inputs, safeguards, conversion to velocity, objectives, the Euler sampler."""
