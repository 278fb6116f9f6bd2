// Typed errors of the C++ runtime. Every message names the file or input at fault and the fix,
// like the Python package's dit_deploy.errors. Catch dit::Error for anything thrown on purpose.
#pragma once

#include <stdexcept>
#include <string>

namespace dit {

/// Base class of every error thrown on purpose by the dit library.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

/// A user input (image, text, array) cannot be used.
class InputError : public Error {
 public:
  using Error::Error;
};

/// An image is missing, corrupt, too large, or of a kind that cannot be converted to RGB.
class ImageError : public InputError {
 public:
  using InputError::InputError;
};

/// A referring expression is empty, not valid UTF-8, or unreasonably long.
class TextError : public InputError {
 public:
  using InputError::InputError;
};

/// An export directory, manifest, vocabulary, graph or engine is missing, corrupt or outdated.
class ArtifactError : public Error {
 public:
  using Error::Error;
};

/// A backend or device (CUDA, TensorRT) is not built in, not installed, or has no device here.
class BackendUnavailableError : public Error {
 public:
  using Error::Error;
};

}  // namespace dit
