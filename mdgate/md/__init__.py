"""Molecular dynamics: batched state, integrators, neighbour lists, initial conditions, the batch runner."""
