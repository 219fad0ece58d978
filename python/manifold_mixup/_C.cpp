// pybind11 module manifold_mixup._C: the Mixer. The forward hooks of mixup points are Python
// (manifold_mixup/hooks.py), so that torch.compile traces them.
// Loading it registers the manifold_mixup ops (torch.ops.manifold_mixup.*).
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/utils/pybind.h>

#include <memory>

#include "errors.h"
#include "mixer.h"
#include "selection.h"

namespace py = pybind11;
using manifold_mixup::Mixer;
using manifold_mixup::MixerOptions;


void bind_selection(py::module_& m);

namespace {
// The mixed classification losses' options from torch's keyword arguments.
manifold_mixup::ClassLossOptions class_loss_options(const std::optional<at::Tensor>& weight,
                                                    int64_t ignore_index, double label_smoothing,
                                                    const std::string& reduction) {
  manifold_mixup::ClassLossOptions o;
  o.weight = weight.value_or(at::Tensor());
  o.ignore_index = ignore_index;
  o.label_smoothing = label_smoothing;
  MM_CHECK_ARG(reduction == "none" || reduction == "mean" || reduction == "sum",
               "reduction must be 'none', 'mean' or 'sum', got '", reduction, "'");
  o.reduction = reduction == "none" ? at::Reduction::None
              : reduction == "mean" ? at::Reduction::Mean : at::Reduction::Sum;
  return o;
}
}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Native core of manifold_mixup: the Mixer (C++ on libtorch).";

  // Calls that run kernels release the GIL: other Python threads (data loading) run meanwhile.
  using release = py::call_guard<py::gil_scoped_release>;
  py::class_<Mixer, std::shared_ptr<Mixer>>(m, "Mixer", R"doc(
Per-batch state of manifold mixup: weights lam ~ Beta(alpha, alpha) folded to max(lam, 1-lam),
a permutation of the batch, the mixup point chosen for the batch, and whether it mixed.
seed=None draws from torch's default generators (torch.manual_seed makes runs repeatable);
an int seed gives the Mixer its own generator (e.g. seed + rank under DistributedDataParallel).)doc")
      .def(py::init([](double alpha, bool input_mixup, std::optional<uint64_t> seed) {
             MixerOptions o;
             o.alpha = alpha;
             o.input_mixup = input_mixup;
             o.seed = seed;
             return std::make_shared<Mixer>(o);
           }),
           py::arg("alpha") = 0.4, py::arg("input_mixup") = true, py::arg("seed") = py::none())
      .def_property("alpha", &Mixer::alpha, &Mixer::set_alpha)
      .def_property("input_mixup", &Mixer::input_mixup, &Mixer::set_input_mixup)
      .def_property_readonly("seed", &Mixer::seed)
      .def("add_point", &Mixer::add_point, py::arg("name"))
      .def("clear_points", &Mixer::clear_points)
      .def("retain_points", &Mixer::retain_points, py::arg("indices"),
           "Keeps only the points at these (increasing) indices, renumbered, with their counters.")
      .def_property_readonly("num_points", &Mixer::num_points)
      .def_property_readonly("point_names", &Mixer::point_names)
      .def("begin_batch", &Mixer::begin_batch, py::arg("batch_size"), py::arg("device"), release(),
           "Draws lam, perm and the mixup point for a batch; returns the chosen point "
           "(an index, INPUT_POINT or NO_POINT).")
      .def_property_readonly("in_batch", &Mixer::in_batch)
      .def_property_readonly("chosen", &Mixer::chosen)
      .def_property_readonly("batch_size", &Mixer::batch_size)
      .def_property_readonly("lam", &Mixer::lam)
      .def_property_readonly("perm", &Mixer::perm)
      .def_property_readonly("chosen_tensor", &Mixer::chosen_tensor,
                             "chosen as a 0-d int64 tensor on the batch's device.")
      .def_property_readonly("mixed", &Mixer::mixed,
                             "Whether this batch mixed (the input, or the chosen point's output).")
      .def("mix", &Mixer::mix, py::arg("t"), release())
      .def("mix_input", &Mixer::mix_input, py::arg("x"), release())
      .def("begin_forward", &Mixer::begin_forward,
           "A further forward pass of the model starts in this batch (the first needs no call).")
      .def("point_output", &Mixer::point_output, py::arg("point"), py::arg("out"), release())
      .def("record_point_mixed", &Mixer::record_point_mixed, py::arg("point"), py::arg("calls"),
           "Records that the chosen point ran `calls` times in this forward and its first output was mixed.")
      .def("mixed_loss", &Mixer::mixed_loss, py::arg("loss_own"), py::arg("loss_other"), release())
      .def("mixed_cross_entropy",
           [](const Mixer& m, const at::Tensor& logits, const at::Tensor& target,
              std::optional<at::Tensor> weight, int64_t ignore_index, double label_smoothing,
              const std::string& reduction) {
             return m.mixed_cross_entropy(
                 logits, target, class_loss_options(weight, ignore_index, label_smoothing, reduction));
           },
           py::arg("logits"), py::arg("target"), py::kw_only(), py::arg("weight") = py::none(),
           py::arg("ignore_index") = -100, py::arg("label_smoothing") = 0.0,
           py::arg("reduction") = "none", release(), R"doc(
Mixed cross-entropy of logits [B, C, ...] against int64 targets [B, ...], from one log-softmax,
weighted, ignored and reduced as torch's cross_entropy with these arguments ('mean' divides by the
kept targets' class weights mixed like the targets). 'none' (the default) gives [B, ...].)doc")
      .def("mixed_nll_loss",
           [](const Mixer& m, const at::Tensor& log_probs, const at::Tensor& target,
              std::optional<at::Tensor> weight, int64_t ignore_index, const std::string& reduction) {
             return m.mixed_nll_loss(log_probs, target,
                                     class_loss_options(weight, ignore_index, 0.0, reduction));
           },
           py::arg("log_probs"), py::arg("target"), py::kw_only(), py::arg("weight") = py::none(),
           py::arg("ignore_index") = -100, py::arg("reduction") = "none", release(),
           "mixed_cross_entropy for log-probabilities, as torch's nll_loss.")
      .def("mix_targets", &Mixer::mix_targets, py::arg("y"), release())
      .def("end_batch", &Mixer::end_batch)
      .def_property_readonly("batches", &Mixer::batches)
      .def_property_readonly("point_mixes", &Mixer::point_mixes)
      .def_property_readonly("input_mixes", &Mixer::input_mixes)
      .def_property_readonly("repeated_calls", &Mixer::repeated_calls)
      .def_property_readonly("unmixed_batches", &Mixer::unmixed_batches)
      .def("reset_counters", &Mixer::reset_counters)
      .def_readonly_static("NO_POINT", &Mixer::kNoPoint)
      .def_readonly_static("INPUT_POINT", &Mixer::kInputPoint)
      // A pickled Mixer comes back fresh: same settings and seed (its generator restarts from
      // that seed), no points, no batch, no counters.
      .def(py::pickle(
          [](const Mixer& mx) { return py::make_tuple(mx.alpha(), mx.input_mixup(), mx.seed()); },
          [](const py::tuple& t) {
            MixerOptions o;
            o.alpha = t[0].cast<double>();
            o.input_mixup = t[1].cast<bool>();
            if (t.size() > 2) o.seed = t[2].cast<std::optional<uint64_t>>();
            return std::make_shared<Mixer>(o);
          }));
  bind_selection(m);
}

// The selection rules (csrc/selection.h), for python/manifold_mixup/selection.py and for tests
// that compare them with the TorchScript front door.
void bind_selection(py::module_& m) {
  namespace mm = manifold_mixup;
  using Facts = std::tuple<std::string, std::vector<std::string>, bool, bool, bool>;
  m.def("apply_selection_rules",
        [](const std::vector<Facts>& modules, bool root_is_candidate) {
          std::vector<mm::ModuleFacts> facts;
          facts.reserve(modules.size());
          for (const auto& [path, class_names, has_forward, non_mixable, partial_inputs] : modules)
            facts.push_back({path, class_names, has_forward, non_mixable, partial_inputs});
          mm::RuleChoice c = mm::apply_selection_rules(facts, root_is_candidate);
          return py::make_tuple(c.rule, c.chosen, c.description);
        },
        py::arg("modules"), py::arg("root_is_candidate"), R"doc(
The selection rules 2 to 6 on one tree: modules is [(path, class_names, has_forward,
non_mixable, partial_inputs)], root first, parents before children; returns (rule, chosen
indices, description), rule 7 and no index when nothing is chosen.)doc");
  m.def("non_mixable_class_names", &mm::non_mixable_class_names,
        "Class names of the default non-mixable kinds (torch.nn classes).");
  m.def("select_points",
        [](const py::object& module) {
          // A ScriptModule from torch.jit.script or torch.jit.load; its _c is the C++ module.
          const py::object c = py::hasattr(module, "_c") ? module.attr("_c") : module;
          if (!py::isinstance<torch::jit::Module>(c))
            throw py::type_error("select_points: module must be a torch.jit.ScriptModule, got " +
                                 py::str(py::type::of(module)).cast<std::string>());
          mm::PointSelection s = mm::select_points(c.cast<torch::jit::Module>());
          return py::make_tuple(s.names, s.rule);
        },
        py::arg("module"), "The selection rules on a TorchScript module, as the C ABI runs them: "
        "(dotted paths, rule).");
}
