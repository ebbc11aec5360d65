// Module entry of pydistill._C. Every op file registers its schemas with
// TORCH_LIBRARY_FRAGMENT(pydistill, m) and its kernels with TORCH_LIBRARY_IMPL,
// so importing this module (torch.ops.load_library or `import pydistill._C`)
// makes all of them visible under torch.ops.pydistill.
#include <Python.h>
#include <torch/library.h>

namespace pydistill {

bool compiled_with_cuda() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace pydistill

TORCH_LIBRARY_FRAGMENT(pydistill, m) {
  m.def("compiled_with_cuda() -> bool", &pydistill::compiled_with_cuda);
}

extern "C" {
// A plain Python module with no methods: the ops live in torch.ops.pydistill.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
