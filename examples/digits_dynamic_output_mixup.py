"""DynamicOutputMixup on scikit-learn's digits: output mixup with alpha on a linear schedule."""
from fastai.basics import *
from manifold_mixup.dynamic_mixup import *

from _digits import digits_dls, residual_cnn

data, model = digits_dls(), residual_cnn()
learner = Learner(data, model, loss_func=CrossEntropyLossFlat(), metrics=accuracy,
                  cbs=DynamicOutputMixup(alpha_min=0.0, alpha_max=0.6, scheduler=SchedLin))
learner.fit(8)
print(f"alpha at the end of training: {learner.dynamic_output_mixup.alpha:.3f}")
