"""Diffusion maths, denoiser, data, Lightning modules and export."""
