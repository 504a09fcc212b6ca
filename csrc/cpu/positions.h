#pragma once
#include "vl3fast/params.h"

namespace vl3fast::cpu {
void rope2d_position_ids(const PositionIdsParams& p);
}
