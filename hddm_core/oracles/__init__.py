"""Exact experts for closed-form checks: Gaussian data and Gaussian mixtures with their optimal predictors and router."""
