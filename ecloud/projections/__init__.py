"""The pure core: reducers that fold events into state and return effects as
data, the scheduler, the autoscaler, the reconciler."""
