"""Evaluation: zero-shot multiple choice by log-likelihood, per language, side by side for several models."""
