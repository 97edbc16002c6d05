"""Train one job, or a sweep with -m: python train.py -m reg.lambd=0,3"""

import hydra
from omegaconf import DictConfig

import regularization


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    return regularization.run(cfg)


if __name__ == "__main__":
    main()
