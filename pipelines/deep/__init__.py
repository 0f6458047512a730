"""Deep stage: tensor shards from Spark/Dask partitions, Keras networks, Horovod data-parallel training."""
