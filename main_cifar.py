"""Train or evaluate a ConvNet with attention on CIFAR-10/100 (or any data= of configs/data/).

    python main_cifar.py model.arch=cifar_resnet56 attention=simam data=cifar100
    python main_cifar.py --dataset cifar100 --arch resnet20 --block_type basic --attention_type simam --attention_param 0.0001
"""
from engine.cli import main

if __name__ == "__main__":
    main(config_name="cifar", entry="cifar")
