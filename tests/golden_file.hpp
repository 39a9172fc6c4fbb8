// SPDX-License-Identifier: MIT
#pragma once
// Reader of the golden files written by tests/reference/generate_*goldens.py.

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <doctest/doctest.h>

#include <netdeconv/error.hpp>

namespace golden_file {

using netdeconv::index_t;

struct golden {
  std::string file;
  std::map<std::string, std::string> header;
  std::map<std::string, std::vector<double>> arrays;

  const std::string& name() const { return header.at("name"); }
  const std::string& kind() const { return header.at("kind"); }
  index_t get(const std::string& key) const {
    const auto it = header.find(key);
    REQUIRE_MESSAGE(it != header.end(), file, ": header key '", key, "' missing");
    return std::stoll(it->second);
  }
  double get_double(const std::string& key) const {
    const auto it = header.find(key);
    REQUIRE_MESSAGE(it != header.end(), file, ": header key '", key, "' missing");
    return std::strtod(it->second.c_str(), nullptr);
  }
  bool has(const std::string& key) const { return arrays.count(key) == 1; }
  const std::vector<double>& array(const std::string& key) const {
    const auto it = arrays.find(key);
    REQUIRE_MESSAGE(it != arrays.end(), file, ": array '", key, "' missing");
    return it->second;
  }
};

/// Tokens: `key value` header pairs, then `array name count v_1 ... v_count` blocks.
golden parse(const std::filesystem::path& path) {
  golden g;
  g.file = path.filename().string();
  std::ifstream in(path);
  REQUIRE_MESSAGE(in.good(), "cannot open ", path.string());
  std::string token;
  while (in >> token) {
    if (token == "array") {
      std::string name;
      std::size_t count = 0;
      REQUIRE_MESSAGE(bool(in >> name >> count), g.file, ": malformed array header");
      std::vector<double> values(count);
      for (auto& v : values) {
        std::string t;
        REQUIRE_MESSAGE(bool(in >> t), g.file, ": array ", name, " is truncated");
        char* end = nullptr;
        v = std::strtod(t.c_str(), &end);
        REQUIRE_MESSAGE(*end == '\0', g.file, ": bad number '", t, "' in array ", name);
      }
      REQUIRE_MESSAGE(g.arrays.count(name) == 0, g.file, ": array ", name, " appears twice");
      g.arrays[name] = std::move(values);
    } else {
      std::string value;
      REQUIRE_MESSAGE(bool(in >> value), g.file, ": header key ", token, " has no value");
      g.header[token] = value;
    }
  }
  REQUIRE_MESSAGE(g.header.count("name") == 1, g.file, ": no name");
  REQUIRE_MESSAGE(g.header.count("kind") == 1, g.file, ": no kind");
  return g;
}

}  // namespace golden_file
