// pybind11 module manifold_mixup._C: the Mixer and the forward-hook object of a mixup point.
// Loading it registers the manifold_mixup ops (torch.ops.manifold_mixup.*).
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/utils/pybind.h>

#include <memory>

#include "mixer.h"

namespace py = pybind11;
using manifold_mixup::Mixer;
using manifold_mixup::MixerOptions;

namespace {

// The forward hook of one mixup point: registered with module.register_forward_hook, it
// hands the module's output to the Mixer, which mixes it when this point is chosen.
struct PointHook {
  std::shared_ptr<Mixer> mixer;
  int64_t index;

  py::object operator()(const py::object& module, const py::object& /*args*/,
                        const py::object& output) const {
    // A module in eval mode is never mixed: inference stays plain even if a hook is left
    // behind by a fit that raised.
    if (!module.attr("training").cast<bool>()) return py::none();
    if (THPVariable_Check(output.ptr())) {
      return py::cast(mixer->point_output(index, py::cast<at::Tensor>(output)));
    }
    if (mixer->in_batch() && mixer->chosen() == index) {
      throw py::type_error("manifold mixup: module " + py::repr(module).cast<std::string>() +
                           " returned a " + py::str(py::type::of(output)).cast<std::string>() +
                           ", not a Tensor; leave it out of module_list or add its type to "
                           "non_mixable_module_types");
    }
    return py::none();
  }
};

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Native core of manifold_mixup: the Mixer and mixup-point hooks (C++ on libtorch).";

  py::class_<Mixer, std::shared_ptr<Mixer>>(m, "Mixer", R"doc(
Per-batch state of manifold mixup: weights lam ~ Beta(alpha, alpha) folded to max(lam, 1-lam),
a permutation of the batch, and the mixup point chosen for the batch.
seed=None draws from torch's default generators (torch.manual_seed makes runs repeatable).)doc")
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
      .def("add_point", &Mixer::add_point, py::arg("name"))
      .def("clear_points", &Mixer::clear_points)
      .def_property_readonly("num_points", &Mixer::num_points)
      .def_property_readonly("point_names", &Mixer::point_names)
      .def("begin_batch", &Mixer::begin_batch, py::arg("batch_size"), py::arg("device"),
           "Draws lam, perm and the mixup point for a batch; returns the chosen point "
           "(an index, INPUT_POINT or NO_POINT).")
      .def_property_readonly("in_batch", &Mixer::in_batch)
      .def_property_readonly("chosen", &Mixer::chosen)
      .def_property_readonly("batch_size", &Mixer::batch_size)
      .def_property_readonly("lam", &Mixer::lam)
      .def_property_readonly("perm", &Mixer::perm)
      .def("mix", &Mixer::mix, py::arg("t"))
      .def("mix_input", &Mixer::mix_input, py::arg("x"))
      .def("point_output", &Mixer::point_output, py::arg("point"), py::arg("out"))
      .def("mixed_loss", &Mixer::mixed_loss, py::arg("loss_own"), py::arg("loss_other"))
      .def("mixed_cross_entropy", &Mixer::mixed_cross_entropy, py::arg("logits"), py::arg("target"))
      .def("mix_targets", &Mixer::mix_targets, py::arg("y"))
      .def("end_batch", &Mixer::end_batch)
      .def_property_readonly("batches", &Mixer::batches)
      .def_property_readonly("point_mixes", &Mixer::point_mixes)
      .def_property_readonly("input_mixes", &Mixer::input_mixes)
      .def_property_readonly("repeated_calls", &Mixer::repeated_calls)
      .def("reset_counters", &Mixer::reset_counters)
      .def_readonly_static("NO_POINT", &Mixer::kNoPoint)
      .def_readonly_static("INPUT_POINT", &Mixer::kInputPoint)
      // A pickled Mixer comes back fresh: same settings, no points, no batch, no counters.
      .def(py::pickle(
          [](const Mixer& mx) { return py::make_tuple(mx.alpha(), mx.input_mixup()); },
          [](const py::tuple& t) {
            MixerOptions o;
            o.alpha = t[0].cast<double>();
            o.input_mixup = t[1].cast<bool>();
            return std::make_shared<Mixer>(o);
          }));

  py::class_<PointHook>(m, "PointHook", R"doc(
Forward hook of one mixup point: module.register_forward_hook(PointHook(mixer, index)).
Replaces the module's output with the mixed output the first time the chosen point runs
in a batch.)doc")
      .def(py::init([](std::shared_ptr<Mixer> mixer, int64_t index) {
             TORCH_CHECK(mixer, "PointHook: mixer must be a Mixer, got None");
             TORCH_CHECK(index >= 0 && index < mixer->num_points(), "PointHook: index must be a ",
                         "point of the mixer, in [0, ", mixer->num_points(), "), got ", index);
             return PointHook{std::move(mixer), index};
           }),
           py::arg("mixer"), py::arg("index"))
      .def_readonly("mixer", &PointHook::mixer)
      .def_readonly("index", &PointHook::index)
      .def("__call__", &PointHook::operator(), py::arg("module"), py::arg("args"), py::arg("output"));
}
