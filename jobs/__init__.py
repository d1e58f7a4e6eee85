"""Background jobs on arq: worker settings per priority queue and the job functions."""
