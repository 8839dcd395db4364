"""lorascope's Hydra sweeper (`hydra/sweeper=lorascope`, conf/config.yaml's default): see once_sweeper."""
