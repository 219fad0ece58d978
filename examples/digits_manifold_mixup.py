"""ManifoldMixup on scikit-learn's digits: mixes the input or one residual block per batch."""
from fastai.basics import *
from manifold_mixup import *

from _digits import digits_dls, residual_cnn

data, model = digits_dls(), residual_cnn()
learner = Learner(data, model, loss_func=CrossEntropyLossFlat(), metrics=accuracy,
                  cbs=ManifoldMixup(alpha=0.4, use_input_mixup=True, module_list=None))
learner.fit(8)
cb = learner.manifold_mixup
print(f"mixed at: input {cb.mixer.input_mixes} times, "
      + ", ".join(f"module '{n}' {c} times" for n, c in zip(cb.mixer.point_names, cb.mixer.point_mixes)))
