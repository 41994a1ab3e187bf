// pybind11 module myxtts_ops.kernels: the fused kernels without TensorFlow.
// NumPy arrays run the CPU kernels; objects exposing __cuda_array_interface__
// (CuPy arrays, PyTorch CUDA tensors) run the CUDA kernels on a given stream.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "kernels/mel_loss_checks.h"
#include "kernels/mel_loss_kernels.h"
#include "kernels/stop_loss_kernels.h"
#if MYXTTS_OPS_WITH_FFI
#include "xla/mel_loss_ffi.h"
#endif

namespace py = pybind11;
using namespace myxtts_ops;

namespace {

// ---------------------------------------------------------------------------
// Argument checks shared by the NumPy and CUDA entry points. Messages name the
// input and the offending value, as the TF op does; the rules themselves live
// in kernels/mel_loss_checks.h.

// huber_delta as a double: a Python or NumPy real number (not a bool, which
// Python would read as 1.0) that passes huber_delta_error. Also what
// myxtts_ops.validation checks huber_delta with, so the rule is written once.
double huber_delta_value(py::handle obj) {
  py::module_ np = py::module_::import("numpy");
  const bool is_bool = PyBool_Check(obj.ptr()) || py::isinstance(obj, np.attr("bool_"));
  const bool is_real = PyFloat_Check(obj.ptr()) || PyLong_Check(obj.ptr()) ||
                       py::isinstance(obj, np.attr("floating")) ||
                       py::isinstance(obj, np.attr("integer"));
  if (is_bool || !is_real)
    throw py::value_error("huber_delta must be a real number (a float), got huber_delta=" +
                          std::string(py::repr(obj)));
  const double delta = PyFloat_AsDouble(obj.ptr());
  if (PyErr_Occurred()) {  // an int too large for a double
    PyErr_Clear();
    throw py::value_error("huber_delta must be a finite float64, got huber_delta=" +
                          std::string(py::repr(obj)));
  }
  const std::string err = huber_delta_error(delta);
  if (!err.empty()) throw py::value_error(err);
  return delta;
}

LossConfig parse_config(const std::string& loss_type, py::handle huber_delta,
                        const std::string& normalization) {
  LossConfig c;
  const std::string err = parse_loss_names(loss_type, normalization, &c);
  if (!err.empty()) throw py::value_error(err);
  c.huber_delta = huber_delta_value(huber_delta);
  return c;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

MelShape check_mel_shapes(const std::vector<int64_t>& t, const std::vector<int64_t>& p) {
  if (t.size() != 3)
    throw py::value_error("y_true must have rank 3 [batch, frames, mels], got shape " +
                          shape_str(t));
  if (p != t)
    throw py::value_error("y_pred shape " + shape_str(p) + " does not match y_true shape " +
                          shape_str(t));
  const std::string err = mel_shape_error(t[0], t[1], t[2]);
  if (!err.empty()) throw py::value_error("y_true: " + err);
  MelShape s;
  s.batch = t[0];
  s.frames = t[1];
  s.mels = t[2];
  return s;
}

void check_vector(const std::vector<int64_t>& shape, int64_t n, const char* name) {
  if (shape.size() != 1 || shape[0] != n)
    throw py::value_error(std::string(name) + " must have shape [" + std::to_string(n) +
                          "], got shape " + shape_str(shape));
}

// A device output of one element: shape [] or [1].
void check_scalar_shape(const std::vector<int64_t>& shape, const char* name) {
  if (!shape.empty() && !(shape.size() == 1 && shape[0] == 1))
    throw py::value_error(std::string(name) + " must be a scalar, got shape " + shape_str(shape));
}

void check_weights_shape(const std::vector<int64_t>& shape, int64_t batch) {
  if (shape != std::vector<int64_t>{2, batch})
    throw py::value_error("sample_weights must have shape [2, " + std::to_string(batch) +
                          "], got shape " + shape_str(shape));
}

void check_lengths_values(const LengthsView& lengths, const MelShape& s) {
  const std::string err = lengths_error(lengths, s.batch, s.frames);
  if (!err.empty()) throw py::value_error(err);
}

// ---------------------------------------------------------------------------
// NumPy side.
DType numpy_mel_dtype(const py::array& a, const char* name) {
  const std::string n = py::str(a.dtype().attr("name"));
  if (n == "float16") return DType::kHalf;
  if (n == "bfloat16") return DType::kBFloat16;
  if (n == "float32") return DType::kFloat;
  if (n == "float64") return DType::kDouble;
  throw py::value_error(std::string(name) + " must be float16, bfloat16, float32 or float64, got " +
                        n);
}

// C-contiguous view or copy in native byte order that keeps the number of
// dimensions (unlike numpy.ascontiguousarray, which turns 0-d into 1-d). The
// kernels read raw memory, so a big-endian array is converted, never misread.
py::array contiguous(py::handle obj) {
  py::module_ np = py::module_::import("numpy");
  py::array a = np.attr("asarray")(obj);
  if (!a.dtype().attr("isnative").cast<bool>())
    a = a.attr("astype")(a.dtype().attr("newbyteorder")("="));
  return np.attr("require")(a, py::none(), "C");
}

std::string dtype_name(const py::array& a) { return py::str(a.dtype().attr("name")); }

std::vector<int64_t> shape_of(const py::array& a) {
  return std::vector<int64_t>(a.shape(), a.shape() + a.ndim());
}

LengthsView numpy_lengths(const py::array& a, const MelShape& s) {
  check_vector(shape_of(a), s.batch, "lengths");
  const std::string n = py::str(a.dtype().attr("name"));
  if (n != "int32" && n != "int64")
    throw py::value_error("lengths must be int32 or int64, got " + n);
  LengthsView v;
  v.data = a.data();
  v.is_int64 = n == "int64";
  check_lengths_values(v, s);
  return v;
}

// Upper bound of num_threads: the kernels are memory bound, so more threads
// than this only cost thread starts.
constexpr int kMaxThreads = 256;

int checked_num_threads(int64_t num_threads) {
  if (num_threads < 0 || num_threads > kMaxThreads)
    throw py::value_error(
        "num_threads must be in [0, " + std::to_string(kMaxThreads) +
        "] (0: one per hardware thread), got num_threads=" + std::to_string(num_threads));
  const int threads = num_threads > 0 ? num_threads : int(std::thread::hardware_concurrency());
  return std::min(std::max(threads, 1), kMaxThreads);
}

// Runs with the GIL released. A worker that cannot start (thread or memory
// limit) joins the ones already started and raises RuntimeError: an
// unjoined std::thread would terminate the process.
ParallelFor thread_pool(int threads) {
  return [threads](int64_t n, int64_t, const std::function<void(int64_t, int64_t)>& fn) {
    const int64_t t = std::min<int64_t>(threads, n);
    if (t <= 1) {
      if (n > 0) fn(0, n);
      return;
    }
    std::vector<std::thread> workers;
    workers.reserve(size_t(t - 1));
    try {
      for (int64_t i = 1; i < t; ++i) workers.emplace_back(fn, n * i / t, n * (i + 1) / t);
    } catch (const std::system_error& e) {
      for (auto& w : workers) w.join();
      throw std::runtime_error("could not start worker thread " +
                               std::to_string(workers.size() + 1) + " of " + std::to_string(t) +
                               " (" + e.what() + "); pass a smaller num_threads");
    }
    fn(0, n / t);
    for (auto& w : workers) w.join();
  };
}

// y_true and y_pred as C-contiguous arrays of one supported dtype and shape.
struct NumpyMels {
  py::array y_true, y_pred;
  MelShape shape;
  DType dtype;
};

NumpyMels numpy_mels(py::object y_true_obj, py::object y_pred_obj) {
  NumpyMels m{contiguous(y_true_obj), contiguous(y_pred_obj), {}, DType::kFloat};
  m.shape = check_mel_shapes(shape_of(m.y_true), shape_of(m.y_pred));
  m.dtype = numpy_mel_dtype(m.y_true, "y_true");
  if (numpy_mel_dtype(m.y_pred, "y_pred") != m.dtype)
    throw py::value_error("y_pred dtype " + std::string(py::str(m.y_pred.dtype().attr("name"))) +
                          " does not match y_true dtype " +
                          std::string(py::str(m.y_true.dtype().attr("name"))));
  return m;
}

py::dict numpy_forward(py::object y_true_obj, py::object y_pred_obj, py::object lengths_obj,
                       py::object state_obj, const std::string& loss_type, py::object huber_delta,
                       const std::string& normalization, int64_t num_threads) {
  const int threads = checked_num_threads(num_threads);
  const NumpyMels m = numpy_mels(y_true_obj, y_pred_obj);
  const MelShape& s = m.shape;
  const DType dtype = m.dtype;
  ForwardArgs args;
  args.config = parse_config(loss_type, huber_delta, normalization);
  args.dtype = dtype;
  args.shape = s;
  args.y_true = m.y_true.data();
  args.y_pred = m.y_pred.data();
  py::array lengths;
  if (!lengths_obj.is_none()) {
    lengths = contiguous(lengths_obj);
    args.lengths = numpy_lengths(lengths, s);
  }
  py::array state_in;
  if (state_obj.is_none()) {
    py::array_t<double> fresh(state::kSize);
    std::fill(fresh.mutable_data(), fresh.mutable_data() + state::kSize, 0.0);
    state_in = fresh;
  } else {
    // float64 only, as the TF op: a float32 state would have lost precision
    // already, and int/bool/complex ones are not states at all.
    state_in = contiguous(state_obj);
    if (dtype_name(state_in) != "float64")
      throw py::value_error("state must be float64, got state dtype=" + dtype_name(state_in));
    check_vector(shape_of(state_in), state::kSize, "state");
  }
  args.state_in = static_cast<const double*>(state_in.data());

  const bool f64 = output_is_double(dtype);
  py::array loss = f64 ? py::array(py::dtype::of<double>(), std::vector<int64_t>{})
                       : py::array(py::dtype::of<float>(), std::vector<int64_t>{});
  py::array per_sample = f64 ? py::array(py::dtype::of<double>(), std::vector<int64_t>{s.batch})
                             : py::array(py::dtype::of<float>(), std::vector<int64_t>{s.batch});
  py::array_t<int64_t> nonfinite(std::vector<int64_t>{});
  py::array_t<double> state_out(state::kSize);
  py::array_t<double> weights(std::vector<int64_t>{2, s.batch});
  py::array_t<int64_t> active(std::vector<int64_t>{});
  py::array_t<int64_t> valid(std::vector<int64_t>{});
  args.loss = loss.mutable_data();
  args.per_sample = per_sample.mutable_data();
  args.nonfinite_count = nonfinite.mutable_data();
  args.state_out = state_out.mutable_data();
  args.sample_weights = weights.mutable_data();
  args.active_count = active.mutable_data();
  args.valid_count = valid.mutable_data();
  {
    py::gil_scoped_release release;
    mel_loss_forward_cpu(args, thread_pool(threads));
  }
  py::dict out;
  out["loss"] = loss;
  out["per_sample"] = per_sample;
  out["nonfinite_count"] = nonfinite;
  out["state"] = state_out;
  out["sample_weights"] = weights;
  out["active_count"] = active;
  out["valid_count"] = valid;
  return out;
}

py::tuple numpy_backward(py::object y_true_obj, py::object y_pred_obj, py::object lengths_obj,
                         py::object weights_obj, py::object grad_loss_obj,
                         py::object grad_per_sample_obj, const std::string& loss_type,
                         py::object huber_delta, int64_t num_threads) {
  const int threads = checked_num_threads(num_threads);
  const NumpyMels m = numpy_mels(y_true_obj, y_pred_obj);
  const MelShape& s = m.shape;
  const DType dtype = m.dtype;
  BackwardArgs args;
  args.config = parse_config(loss_type, huber_delta, "per_sample");
  args.dtype = dtype;
  args.shape = s;
  args.y_true = m.y_true.data();
  args.y_pred = m.y_pred.data();
  py::array lengths;
  if (!lengths_obj.is_none()) {
    lengths = contiguous(lengths_obj);
    args.lengths = numpy_lengths(lengths, s);
  }
  py::array_t<double, py::array::c_style | py::array::forcecast> weights(weights_obj);
  check_weights_shape(shape_of(weights), s.batch);
  args.sample_weights = weights.data();
  // Upstream gradients in the loss dtype.
  const bool f64 = output_is_double(dtype);
  py::array grad_loss, grad_per_sample;
  if (f64) {
    grad_loss = py::array_t<double, py::array::c_style | py::array::forcecast>(grad_loss_obj);
    grad_per_sample =
        py::array_t<double, py::array::c_style | py::array::forcecast>(grad_per_sample_obj);
  } else {
    grad_loss = py::array_t<float, py::array::c_style | py::array::forcecast>(grad_loss_obj);
    grad_per_sample =
        py::array_t<float, py::array::c_style | py::array::forcecast>(grad_per_sample_obj);
  }
  if (grad_loss.size() != 1)
    throw py::value_error("grad_loss must be a scalar, got shape " +
                          shape_str(shape_of(grad_loss)));
  check_vector(shape_of(grad_per_sample), s.batch, "grad_per_sample");
  args.grad_loss = grad_loss.data();
  args.grad_per_sample = grad_per_sample.data();
  // Same dtype object as the input (keeps ml_dtypes' bfloat16).
  py::array g_true(m.y_true.dtype(), shape_of(m.y_true));
  py::array g_pred(m.y_true.dtype(), shape_of(m.y_true));
  args.grad_y_true = g_true.mutable_data();
  args.grad_y_pred = g_pred.mutable_data();
  {
    py::gil_scoped_release release;
    mel_loss_backward_cpu(args, thread_pool(threads));
  }
  return py::make_tuple(g_true, g_pred);
}

// ---------------------------------------------------------------------------
// CUDA side: __cuda_array_interface__ (version 2+), C-contiguous only.
struct DeviceArray {
  void* ptr = nullptr;
  std::vector<int64_t> shape;
  std::string typestr;
};

DeviceArray device_array(py::handle obj, const char* name) {
  if (!py::hasattr(obj, "__cuda_array_interface__"))
    throw py::type_error(std::string(name) +
                         " must be a CUDA device array exposing __cuda_array_interface__ "
                         "(a CuPy array or a PyTorch CUDA tensor)");
  py::dict iface = obj.attr("__cuda_array_interface__");
  DeviceArray a;
  for (auto d : iface["shape"].cast<py::tuple>()) a.shape.push_back(d.cast<int64_t>());
  a.typestr = iface["typestr"].cast<std::string>();
  if (a.typestr.size() < 3 || (a.typestr[0] != '<' && a.typestr[0] != '|'))
    throw py::value_error(std::string(name) +
                          " must be in little-endian (native) byte order, got typestr " +
                          a.typestr);
  a.ptr = reinterpret_cast<void*>(iface["data"].cast<py::tuple>()[0].cast<uintptr_t>());
  if (iface.contains("strides") && !iface["strides"].is_none()) {
    // Accept explicit strides only when they describe a C-contiguous layout.
    auto strides = iface["strides"].cast<py::tuple>();
    int64_t expected = int64_t(std::stoi(a.typestr.substr(2)));
    for (int64_t i = int64_t(a.shape.size()) - 1; i >= 0; --i) {
      if (a.shape[i] > 1 && strides[i].cast<int64_t>() != expected)
        throw py::value_error(std::string(name) + " must be C-contiguous");
      expected *= a.shape[i];
    }
  }
  return a;
}

void expect_type(const DeviceArray& a, const std::string& typestr, const char* name) {
  if (a.typestr != typestr)
    throw py::value_error(std::string(name) + " must have typestr " + typestr + ", got " +
                          a.typestr);
}

DType device_mel_dtype(const DeviceArray& a, const std::string& override_dtype, const char* name) {
  const std::string t = a.typestr.substr(1);
  if (!override_dtype.empty()) {
    if (override_dtype != "bfloat16")
      throw py::value_error("dtype override must be 'bfloat16', got '" + override_dtype + "'");
    if (t != "i2" && t != "u2")
      throw py::value_error(std::string(name) +
                            " must be an int16/uint16 view when dtype='bfloat16', got " +
                            a.typestr);
    return DType::kBFloat16;
  }
  if (t == "f2") return DType::kHalf;
  if (t == "f4") return DType::kFloat;
  if (t == "f8") return DType::kDouble;
  throw py::value_error(std::string(name) + " must be float16, float32 or float64 (" +
                        "bfloat16 as an int16 view with dtype='bfloat16'), got " + a.typestr);
}

void require_cuda() {
  if (!built_with_cuda()) throw std::runtime_error("myxtts_ops.kernels was built without CUDA");
}

void check(const std::string& err) {
  if (!err.empty()) throw std::runtime_error(err);
}

LengthsView device_lengths(py::object obj, const MelShape& s, bool check_values, void* stream) {
  LengthsView v;
  if (obj.is_none()) return v;
  const DeviceArray a = device_array(obj, "lengths");
  check_vector(a.shape, s.batch, "lengths");
  if (a.typestr != "<i4" && a.typestr != "<i8")
    throw py::value_error("lengths must be int32 or int64, got " + a.typestr);
  v.data = a.ptr;
  v.is_int64 = a.typestr == "<i8";
  if (check_values && s.batch > 0) {
    // One small synchronous copy; pass check_lengths=False to skip it (the
    // kernel still clamps out-of-range lengths and then returns a NaN loss).
    std::vector<int64_t> host(s.batch);
    std::vector<int32_t> host32(v.is_int64 ? 0 : s.batch);
    void* dst = v.is_int64 ? static_cast<void*>(host.data()) : static_cast<void*>(host32.data());
    check(cuda_copy_to_host(dst, v.data, s.batch * (v.is_int64 ? 8 : 4), stream));
    LengthsView hv;
    hv.data = dst;
    hv.is_int64 = v.is_int64;
    check_lengths_values(hv, s);
  }
  return v;
}

// y_true and y_pred as device arrays of one supported dtype and shape; `dtype_obj`
// is None or "bfloat16" (for int16/uint16 views).
struct DeviceMels {
  DeviceArray y_true, y_pred;
  MelShape shape;
  DType dtype;
};

DeviceMels device_mels(py::object y_true_obj, py::object y_pred_obj, py::object dtype_obj) {
  const std::string dtype_override = dtype_obj.is_none() ? "" : dtype_obj.cast<std::string>();
  DeviceMels m{
      device_array(y_true_obj, "y_true"), device_array(y_pred_obj, "y_pred"), {}, DType::kFloat};
  m.shape = check_mel_shapes(m.y_true.shape, m.y_pred.shape);
  m.dtype = device_mel_dtype(m.y_true, dtype_override, "y_true");
  if (m.y_pred.typestr != m.y_true.typestr)
    throw py::value_error("y_pred typestr " + m.y_pred.typestr + " does not match y_true " +
                          m.y_true.typestr);
  return m;
}

void cuda_forward(py::object y_true_obj, py::object y_pred_obj, py::object lengths_obj,
                  py::object state_obj, py::object loss_obj, py::object per_sample_obj,
                  py::object nonfinite_obj, py::object new_state_obj, py::object weights_obj,
                  py::object workspace_obj, const std::string& loss_type, py::object huber_delta,
                  const std::string& normalization, uintptr_t stream, py::object dtype_obj,
                  bool check_lengths, py::object active_obj, py::object valid_obj) {
  require_cuda();
  const DeviceMels m = device_mels(y_true_obj, y_pred_obj, dtype_obj);
  const MelShape& s = m.shape;
  const DType dtype = m.dtype;
  void* strm = reinterpret_cast<void*>(stream);
  ForwardArgs args;
  args.config = parse_config(loss_type, huber_delta, normalization);
  args.dtype = dtype;
  args.shape = s;
  args.y_true = m.y_true.ptr;
  args.y_pred = m.y_pred.ptr;
  args.lengths = device_lengths(lengths_obj, s, check_lengths, strm);
  const std::string out_t = output_is_double(dtype) ? "<f8" : "<f4";
  const DeviceArray state_in = device_array(state_obj, "state");
  check_vector(state_in.shape, state::kSize, "state");
  expect_type(state_in, "<f8", "state");
  const DeviceArray loss = device_array(loss_obj, "loss");
  expect_type(loss, out_t, "loss");
  check_scalar_shape(loss.shape, "loss");
  const DeviceArray per_sample = device_array(per_sample_obj, "per_sample");
  check_vector(per_sample.shape, s.batch, "per_sample");
  expect_type(per_sample, out_t, "per_sample");
  const DeviceArray nonfinite = device_array(nonfinite_obj, "nonfinite_count");
  expect_type(nonfinite, "<i8", "nonfinite_count");
  check_scalar_shape(nonfinite.shape, "nonfinite_count");
  const DeviceArray new_state = device_array(new_state_obj, "new_state");
  check_vector(new_state.shape, state::kSize, "new_state");
  expect_type(new_state, "<f8", "new_state");
  const DeviceArray weights = device_array(weights_obj, "sample_weights");
  check_weights_shape(weights.shape, s.batch);
  expect_type(weights, "<f8", "sample_weights");
  const DeviceArray workspace = device_array(workspace_obj, "workspace");
  int64_t ws_bytes = std::stoll(workspace.typestr.substr(2));
  for (int64_t d : workspace.shape) ws_bytes *= d;
  if (size_t(ws_bytes) < cuda_forward_workspace_size(s))
    throw py::value_error("workspace has " + std::to_string(ws_bytes) + " bytes, needs " +
                          std::to_string(cuda_forward_workspace_size(s)) +
                          " (cuda_workspace_size)");
  args.state_in = static_cast<const double*>(state_in.ptr);
  args.loss = loss.ptr;
  args.per_sample = per_sample.ptr;
  args.nonfinite_count = static_cast<int64_t*>(nonfinite.ptr);
  args.state_out = static_cast<double*>(new_state.ptr);
  args.sample_weights = static_cast<double*>(weights.ptr);
  // Optional int64 scalars: the counts the TF op returns with return_counts.
  for (auto [obj, name, dst] : {std::make_tuple(active_obj, "active_count", &args.active_count),
                                std::make_tuple(valid_obj, "valid_count", &args.valid_count)}) {
    if (obj.is_none()) continue;
    const DeviceArray a = device_array(obj, name);
    expect_type(a, "<i8", name);
    check_scalar_shape(a.shape, name);
    *dst = static_cast<int64_t*>(a.ptr);
  }
  py::gil_scoped_release release;
  check(mel_loss_forward_cuda(args, workspace.ptr, nullptr, 0, strm));
}

void cuda_backward(py::object y_true_obj, py::object y_pred_obj, py::object lengths_obj,
                   py::object weights_obj, py::object grad_loss_obj, py::object grad_per_sample_obj,
                   py::object grad_true_obj, py::object grad_pred_obj, const std::string& loss_type,
                   py::object huber_delta, uintptr_t stream, py::object dtype_obj,
                   bool check_lengths) {
  require_cuda();
  const DeviceMels m = device_mels(y_true_obj, y_pred_obj, dtype_obj);
  const DeviceArray& y_true = m.y_true;
  const MelShape& s = m.shape;
  const DType dtype = m.dtype;
  void* strm = reinterpret_cast<void*>(stream);
  BackwardArgs args;
  args.config = parse_config(loss_type, huber_delta, "per_sample");
  args.dtype = dtype;
  args.shape = s;
  args.y_true = m.y_true.ptr;
  args.y_pred = m.y_pred.ptr;
  args.lengths = device_lengths(lengths_obj, s, check_lengths, strm);
  const std::string out_t = output_is_double(dtype) ? "<f8" : "<f4";
  const DeviceArray weights = device_array(weights_obj, "sample_weights");
  check_weights_shape(weights.shape, s.batch);
  expect_type(weights, "<f8", "sample_weights");
  const DeviceArray grad_loss = device_array(grad_loss_obj, "grad_loss");
  expect_type(grad_loss, out_t, "grad_loss");
  check_scalar_shape(grad_loss.shape, "grad_loss");
  const DeviceArray grad_per_sample = device_array(grad_per_sample_obj, "grad_per_sample");
  check_vector(grad_per_sample.shape, s.batch, "grad_per_sample");
  expect_type(grad_per_sample, out_t, "grad_per_sample");
  // grad_y_true may be None when only d/dy_pred is wanted.
  const DeviceArray g_pred = device_array(grad_pred_obj, "grad_y_pred");
  const DeviceArray g_true =
      grad_true_obj.is_none() ? g_pred : device_array(grad_true_obj, "grad_y_true");
  if (g_true.shape != y_true.shape || g_pred.shape != y_true.shape)
    throw py::value_error("grad_y_true and grad_y_pred must have the shape of y_true " +
                          shape_str(y_true.shape));
  if (g_true.typestr != y_true.typestr || g_pred.typestr != y_true.typestr)
    throw py::value_error("grad_y_true and grad_y_pred must have the dtype of y_true (" +
                          y_true.typestr + ")");
  args.sample_weights = static_cast<const double*>(weights.ptr);
  args.grad_loss = grad_loss.ptr;
  args.grad_per_sample = grad_per_sample.ptr;
  args.grad_y_true = grad_true_obj.is_none() ? nullptr : g_true.ptr;
  args.grad_y_pred = g_pred.ptr;
  py::gil_scoped_release release;
  check(mel_loss_backward_cuda(args, strm));
}

// ---------------------------------------------------------------------------
// The stop-token loss kernels (float32, int32 lengths).
StopLossConfig stop_config(float positive_weight, float label_smoothing, float prob_min) {
  const std::string err = stop_config_error(positive_weight, label_smoothing, prob_min);
  if (!err.empty()) throw py::value_error(err);
  StopLossConfig c;
  c.positive_weight = positive_weight;
  c.label_smoothing = label_smoothing;
  c.prob_min = prob_min;
  return c;
}

void expect_numpy_dtype(const py::array& a, const char* want, const char* name) {
  if (dtype_name(a) != want)
    throw py::value_error(std::string(name) + " must be " + want + ", got " + dtype_name(a));
}

// target, pred and lengths checked by the one rule of mel_loss_checks.h.
StopShape numpy_stop_inputs(const py::array& target, const py::array& pred,
                            const py::array& lengths) {
  expect_numpy_dtype(target, "float32", "stop_target");
  expect_numpy_dtype(pred, "float32", "stop_tokens");
  expect_numpy_dtype(lengths, "int32", "stop lengths");
  const std::string err = check_stop_shapes(shape_of(target), shape_of(pred), shape_of(lengths));
  if (!err.empty()) throw py::value_error(err);
  StopShape s{target.shape(0), target.shape(1)};
  const std::string bad =
      stop_lengths_error(static_cast<const int32_t*>(lengths.data()), s.batch, s.frames);
  if (!bad.empty()) throw py::value_error(bad);
  return s;
}

py::dict numpy_stop_forward(py::object target_obj, py::object pred_obj, py::object lengths_obj,
                            float positive_weight, float label_smoothing, float prob_min,
                            int64_t num_threads) {
  const int threads = checked_num_threads(num_threads);
  const py::array target = contiguous(target_obj), pred = contiguous(pred_obj),
                  lengths = contiguous(lengths_obj);
  StopForwardArgs args;
  args.shape = numpy_stop_inputs(target, pred, lengths);
  args.config = stop_config(positive_weight, label_smoothing, prob_min);
  args.target = static_cast<const float*>(target.data());
  args.pred = static_cast<const float*>(pred.data());
  args.lengths = static_cast<const int32_t*>(lengths.data());
  py::array_t<float> sums(args.shape.batch);
  py::array_t<int32_t> counts(args.shape.batch);
  py::array_t<int64_t> nonfinite(std::vector<int64_t>{});
  args.sums = sums.mutable_data();
  args.counts = counts.mutable_data();
  args.nonfinite = nonfinite.mutable_data();
  {
    py::gil_scoped_release release;
    stop_loss_forward_cpu(args, thread_pool(threads));
  }
  py::dict out;
  out["sums"] = sums;
  out["counts"] = counts;
  out["nonfinite_count"] = nonfinite;
  return out;
}

py::tuple numpy_stop_backward(py::object target_obj, py::object pred_obj, py::object lengths_obj,
                              py::object grad_sums_obj, float positive_weight,
                              float label_smoothing, float prob_min, int64_t num_threads) {
  const int threads = checked_num_threads(num_threads);
  const py::array target = contiguous(target_obj), pred = contiguous(pred_obj),
                  lengths = contiguous(lengths_obj), grad_sums = contiguous(grad_sums_obj);
  StopBackwardArgs args;
  args.shape = numpy_stop_inputs(target, pred, lengths);
  expect_numpy_dtype(grad_sums, "float32", "grad_sums");
  check_vector(shape_of(grad_sums), args.shape.batch, "grad_sums");
  args.config = stop_config(positive_weight, label_smoothing, prob_min);
  args.target = static_cast<const float*>(target.data());
  args.pred = static_cast<const float*>(pred.data());
  args.lengths = static_cast<const int32_t*>(lengths.data());
  args.grad_sums = static_cast<const float*>(grad_sums.data());
  const std::vector<int64_t> shape{args.shape.batch, args.shape.frames};
  py::array_t<float> g_target(shape), g_pred(shape);
  args.grad_target = g_target.mutable_data();
  args.grad_pred = g_pred.mutable_data();
  {
    py::gil_scoped_release release;
    stop_loss_backward_cpu(args, thread_pool(threads));
  }
  return py::make_tuple(g_target, g_pred);
}

// Device arrays: the same rules, the lengths read back once (one small copy).
StopShape device_stop_inputs(const DeviceArray& target, const DeviceArray& pred,
                             const DeviceArray& lengths, void* stream) {
  expect_type(target, "<f4", "stop_target");
  expect_type(pred, "<f4", "stop_tokens");
  expect_type(lengths, "<i4", "stop lengths");
  const std::string err = check_stop_shapes(target.shape, pred.shape, lengths.shape);
  if (!err.empty()) throw py::value_error(err);
  StopShape s{target.shape[0], target.shape[1]};
  std::vector<int32_t> host(s.batch);
  if (s.batch > 0) check(cuda_copy_to_host(host.data(), lengths.ptr, s.batch * 4, stream));
  const std::string bad = stop_lengths_error(host.data(), s.batch, s.frames);
  if (!bad.empty()) throw py::value_error(bad);
  return s;
}

void cuda_stop_forward(py::object target_obj, py::object pred_obj, py::object lengths_obj,
                       py::object sums_obj, py::object counts_obj, py::object nonfinite_obj,
                       float positive_weight, float label_smoothing, float prob_min,
                       uintptr_t stream) {
  require_cuda();
  void* strm = reinterpret_cast<void*>(stream);
  const DeviceArray target = device_array(target_obj, "stop_target");
  const DeviceArray pred = device_array(pred_obj, "stop_tokens");
  const DeviceArray lengths = device_array(lengths_obj, "stop lengths");
  StopForwardArgs args;
  args.shape = device_stop_inputs(target, pred, lengths, strm);
  args.config = stop_config(positive_weight, label_smoothing, prob_min);
  const DeviceArray sums = device_array(sums_obj, "sums");
  expect_type(sums, "<f4", "sums");
  check_vector(sums.shape, args.shape.batch, "sums");
  const DeviceArray counts = device_array(counts_obj, "counts");
  expect_type(counts, "<i4", "counts");
  check_vector(counts.shape, args.shape.batch, "counts");
  const DeviceArray nonfinite = device_array(nonfinite_obj, "nonfinite_count");
  expect_type(nonfinite, "<i8", "nonfinite_count");
  check_scalar_shape(nonfinite.shape, "nonfinite_count");
  args.target = static_cast<const float*>(target.ptr);
  args.pred = static_cast<const float*>(pred.ptr);
  args.lengths = static_cast<const int32_t*>(lengths.ptr);
  args.sums = static_cast<float*>(sums.ptr);
  args.counts = static_cast<int32_t*>(counts.ptr);
  args.nonfinite = static_cast<int64_t*>(nonfinite.ptr);
  check(stop_loss_forward_cuda(args, strm));
}

void cuda_stop_backward(py::object target_obj, py::object pred_obj, py::object lengths_obj,
                        py::object grad_sums_obj, py::object grad_target_obj,
                        py::object grad_pred_obj, float positive_weight, float label_smoothing,
                        float prob_min, uintptr_t stream) {
  require_cuda();
  void* strm = reinterpret_cast<void*>(stream);
  const DeviceArray target = device_array(target_obj, "stop_target");
  const DeviceArray pred = device_array(pred_obj, "stop_tokens");
  const DeviceArray lengths = device_array(lengths_obj, "stop lengths");
  StopBackwardArgs args;
  args.shape = device_stop_inputs(target, pred, lengths, strm);
  args.config = stop_config(positive_weight, label_smoothing, prob_min);
  const DeviceArray grad_sums = device_array(grad_sums_obj, "grad_sums");
  expect_type(grad_sums, "<f4", "grad_sums");
  check_vector(grad_sums.shape, args.shape.batch, "grad_sums");
  const DeviceArray grad_pred = device_array(grad_pred_obj, "grad_pred");
  expect_type(grad_pred, "<f4", "grad_pred");
  if (grad_pred.shape != target.shape)
    throw py::value_error("grad_pred must have the shape of stop_target");
  args.target = static_cast<const float*>(target.ptr);
  args.pred = static_cast<const float*>(pred.ptr);
  args.lengths = static_cast<const int32_t*>(lengths.ptr);
  args.grad_sums = static_cast<const float*>(grad_sums.ptr);
  args.grad_pred = static_cast<float*>(grad_pred.ptr);
  if (!grad_target_obj.is_none()) {
    const DeviceArray grad_target = device_array(grad_target_obj, "grad_target");
    expect_type(grad_target, "<f4", "grad_target");
    if (grad_target.shape != target.shape)
      throw py::value_error("grad_target must have the shape of stop_target");
    args.grad_target = static_cast<float*>(grad_target.ptr);
  }
  check(stop_loss_backward_cuda(args, strm));
}

size_t workspace_size(int64_t batch, int64_t frames, int64_t mels) {
  const std::string err = mel_shape_error(batch, frames, mels);
  if (!err.empty()) throw py::value_error(err);
  MelShape s;
  s.batch = batch;
  s.frames = frames;
  s.mels = mels;
  return cuda_forward_workspace_size(s);
}

}  // namespace

PYBIND11_MODULE(kernels, m) {
  m.doc() =
      "Fused masked mel loss kernels without TensorFlow: NumPy arrays (CPU) and CUDA "
      "device arrays via __cuda_array_interface__ (CuPy, PyTorch).";
  m.attr("STATE_SIZE") = state::kSize;

  m.def("built_with_cuda", &built_with_cuda, "Whether the CUDA kernels were compiled in.");
  m.def("cuda_device_count", &cuda_device_count, "Visible CUDA devices (0 without CUDA).");
  m.def("forward", &numpy_forward, py::arg("y_true"), py::arg("y_pred"),
        py::arg("lengths") = py::none(), py::arg("state") = py::none(), py::kw_only(),
        py::arg("loss_type") = "l1", py::arg("huber_delta") = 1.0,
        py::arg("normalization") = "per_sample", py::arg("num_threads") = 0,
        "CPU forward on NumPy arrays. Returns a dict: loss, per_sample, nonfinite_count, "
        "state, sample_weights, active_count, valid_count.");
  m.def("backward", &numpy_backward, py::arg("y_true"), py::arg("y_pred"), py::arg("lengths"),
        py::arg("sample_weights"), py::arg("grad_loss"), py::arg("grad_per_sample"), py::kw_only(),
        py::arg("loss_type") = "l1", py::arg("huber_delta") = 1.0, py::arg("num_threads") = 0,
        "CPU backward on NumPy arrays. Returns (grad_y_true, grad_y_pred).");
  m.def("cuda_workspace_size", &workspace_size, py::arg("batch"), py::arg("frames"),
        py::arg("mels"),
        "Bytes of device workspace cuda_forward needs (the same for every dtype).");
  m.def("check_huber_delta", &huber_delta_value, py::arg("huber_delta"),
        "huber_delta as a float if it is a finite real number (not a bool) of at least the "
        "smallest normal float32; raises ValueError naming the value otherwise. The one "
        "huber_delta rule.");
  m.def("cuda_forward", &cuda_forward, py::arg("y_true"), py::arg("y_pred"), py::arg("lengths"),
        py::arg("state"), py::arg("loss"), py::arg("per_sample"), py::arg("nonfinite_count"),
        py::arg("new_state"), py::arg("sample_weights"), py::arg("workspace"), py::kw_only(),
        py::arg("loss_type") = "l1", py::arg("huber_delta") = 1.0,
        py::arg("normalization") = "per_sample", py::arg("stream") = 0,
        py::arg("dtype") = py::none(), py::arg("check_lengths") = true,
        py::arg("active_count") = py::none(), py::arg("valid_count") = py::none(),
        "CUDA forward on device arrays, one kernel launch on `stream` (a cudaStream_t as int). "
        "active_count / valid_count: optional int64 scalars the kernel also writes.");
  m.def("cuda_backward", &cuda_backward, py::arg("y_true"), py::arg("y_pred"), py::arg("lengths"),
        py::arg("sample_weights"), py::arg("grad_loss"), py::arg("grad_per_sample"),
        py::arg("grad_y_true"), py::arg("grad_y_pred"), py::kw_only(), py::arg("loss_type") = "l1",
        py::arg("huber_delta") = 1.0, py::arg("stream") = 0, py::arg("dtype") = py::none(),
        py::arg("check_lengths") = true,
        "CUDA backward on device arrays, one kernel launch on `stream`.");
  m.def("stop_forward", &numpy_stop_forward, py::arg("target"), py::arg("pred"), py::arg("lengths"),
        py::kw_only(), py::arg("positive_weight"), py::arg("label_smoothing"), py::arg("prob_min"),
        py::arg("num_threads") = 0,
        "Stop-token loss forward on float32 NumPy arrays [B, T] and int32 lengths [B]. Returns "
        "a dict: sums, counts, nonfinite_count.");
  m.def("stop_backward", &numpy_stop_backward, py::arg("target"), py::arg("pred"),
        py::arg("lengths"), py::arg("grad_sums"), py::kw_only(), py::arg("positive_weight"),
        py::arg("label_smoothing"), py::arg("prob_min"), py::arg("num_threads") = 0,
        "Stop-token loss backward on NumPy arrays. Returns (grad_target, grad_pred).");
  m.def("cuda_stop_forward", &cuda_stop_forward, py::arg("target"), py::arg("pred"),
        py::arg("lengths"), py::arg("sums"), py::arg("counts"), py::arg("nonfinite_count"),
        py::kw_only(), py::arg("positive_weight"), py::arg("label_smoothing"), py::arg("prob_min"),
        py::arg("stream") = 0,
        "Stop-token loss forward on CUDA device arrays (float32, int32 lengths), on `stream`.");
  m.def("cuda_stop_backward", &cuda_stop_backward, py::arg("target"), py::arg("pred"),
        py::arg("lengths"), py::arg("grad_sums"), py::arg("grad_target"), py::arg("grad_pred"),
        py::kw_only(), py::arg("positive_weight"), py::arg("label_smoothing"), py::arg("prob_min"),
        py::arg("stream") = 0,
        "Stop-token loss backward on CUDA device arrays; grad_target may be None.");
#if MYXTTS_OPS_WITH_FFI
  // The custom-call target names, for runtimes that call the handlers (JAX).
  m.attr("FFI_FORWARD_TARGET") = kFfiForwardTarget;
  m.attr("FFI_BACKWARD_TARGET") = kFfiBackwardTarget;
  m.attr("FFI_CHECK_LENGTHS_TARGET") = kFfiCheckLengthsTarget;
  m.def(
      "ffi_targets",
      [] {
        py::dict out;
        const std::pair<const char*, FfiHandlers> platforms[] = {{"cpu", host_ffi_handlers()},
                                                                 {"CUDA", cuda_ffi_handlers()}};
        for (const auto& [platform, handlers] : platforms) {
          if (handlers.forward == nullptr) continue;  // built without CUDA
          py::dict targets;
          targets[kFfiForwardTarget] = py::capsule(reinterpret_cast<void*>(handlers.forward));
          targets[kFfiBackwardTarget] = py::capsule(reinterpret_cast<void*>(handlers.backward));
          targets[kFfiCheckLengthsTarget] =
              py::capsule(reinterpret_cast<void*>(handlers.check_lengths));
          out[platform] = targets;
        }
        return out;
      },
      "The XLA typed-FFI handlers the TF op lowers to under jit_compile, as PyCapsules: "
      "{platform: {target_name: capsule}}, for jax.ffi.register_ffi_target(name, capsule, "
      "platform=platform). Custom-call contract: csrc/xla/mel_loss_ffi.cc.");
#endif
}
