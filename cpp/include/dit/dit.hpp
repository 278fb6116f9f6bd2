// The dit C++ runtime: one include for everything.
#pragma once

#include "dit/errors.hpp"
#include "dit/image.hpp"
#include "dit/manifest.hpp"
#include "dit/postprocess.hpp"
#include "dit/predictor.hpp"
#include "dit/tokenizer.hpp"
