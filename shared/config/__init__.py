"""One experiment config, shared by the aggregator and every worker.

Values come, lowest priority first, from the defaults, a YAML file, environment variables
(``TRIBUTARY_NUM_ROUNDS=5``, nested with ``__``: ``TRIBUTARY_PARTITION__ALPHA``) and
command-line overrides (``--set num_rounds=5``). Unknown keys are an error that names the
key. The modules: ``experiment.py`` (`ExperimentConfig`, its cross-checks and what derives
from it), ``sections.py`` (partition, synthetic data, network, byzantine), ``dp_sgd.py``
(DP-SGD on the clients), ``compression.py`` (updates as encoded deltas), ``download.py``
(the global model as encoded steps), ``strategies.py`` (the `StrategyConfig` union, one
class per server rule), ``secagg.py`` (secure aggregation) and ``loading.py`` (`load_config`).
Import every name from here.
"""

from shared.config.asynchronous import AsyncConfig
from shared.config.compression import CompressionConfig
from shared.config.download import DownloadCompressionConfig
from shared.config.dp_sgd import DpSgdConfig
from shared.config.experiment import ENV_PREFIX, ExperimentConfig, ModelArgs, ModelInitArgs
from shared.config.loading import config_source, load_config, parse_overrides
from shared.config.secagg import SecAggConfig, round_threshold
from shared.config.sections import (
    ByzantineProfile,
    DatasetName,
    GaussianAttack,
    NetworkProfile,
    PartitionConfig,
    PartitionName,
    SignFlipAttack,
    SyntheticConfig,
)
from shared.config.strategies import (
    DPFedAvgConfig,
    FedAdagradConfig,
    FedAdamConfig,
    FedAvgConfig,
    FedAvgMConfig,
    FedMedianConfig,
    FedProxConfig,
    FedTrimmedAvgConfig,
    FedYogiConfig,
    KrumConfig,
    ScaffoldConfig,
    StrategyConfig,
)

__all__ = [
    "ENV_PREFIX",
    "AsyncConfig",
    "ByzantineProfile",
    "CompressionConfig",
    "DPFedAvgConfig",
    "DatasetName",
    "DownloadCompressionConfig",
    "DpSgdConfig",
    "ExperimentConfig",
    "FedAdagradConfig",
    "FedAdamConfig",
    "FedAvgConfig",
    "FedAvgMConfig",
    "FedMedianConfig",
    "FedProxConfig",
    "FedTrimmedAvgConfig",
    "FedYogiConfig",
    "GaussianAttack",
    "KrumConfig",
    "ModelArgs",
    "ModelInitArgs",
    "NetworkProfile",
    "PartitionConfig",
    "PartitionName",
    "ScaffoldConfig",
    "SecAggConfig",
    "SignFlipAttack",
    "StrategyConfig",
    "SyntheticConfig",
    "config_source",
    "load_config",
    "parse_overrides",
    "round_threshold",
]
