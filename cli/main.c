/* Temporary entry point; the real CLI lands with the engine. */
#include <stdio.h>

#include "resid.h"

int main(void) {
    printf("resid %s\n", RESID_VERSION);
    return 0;
}
