"""Train or evaluate a ConvNet with attention on ImageNet (or any ImageFolder with train/ and val/).

    python main_imagenet.py data.root=/data/imagenet model.arch=resnet50 attention=simam attention.e_lambda=0.1
    python main_imagenet.py /data/imagenet --gpu 0,1,2,3 -a resnet50 --attention_type simam --attention_param 0.1
"""
from engine.cli import main

if __name__ == "__main__":
    main(config_name="imagenet", entry="imagenet")
