"""The pipeline's stages as plain functions: parameters, stage runners, evaluation, report, study."""
