"""The screening classifier: a torchvision ResNet with one logit for the positive (high-grade) class.

``config`` (architecture and preprocessing), ``data`` (images in memory, augmentation), ``balancing``
(the imbalance strategies compared in the experiment), ``train`` (the recipe), ``folder`` (the saved
model with its validated threshold).
"""
