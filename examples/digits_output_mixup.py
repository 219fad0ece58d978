"""OutputMixup on scikit-learn's digits: mixes only the logits, inside the loss."""
from fastai.basics import *
from manifold_mixup import *

from _digits import digits_dls, residual_cnn

data, model = digits_dls(), residual_cnn()
learner = Learner(data, model, loss_func=CrossEntropyLossFlat(), metrics=accuracy,
                  cbs=OutputMixup(alpha=0.4))
learner.fit(8)
print(f"mixed the output in {learner.output_mixup.mixer.point_mixes[0]} batches")
